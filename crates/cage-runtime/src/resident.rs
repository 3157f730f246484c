//! Resident memory a long-lived helper touched only while it started.
//!
//! cagerun is one static binary of ~25 MB. A helper that starts a container (the monitor) or
//! a network (the holder) runs a lot of its code once: every page of it stays mapped and
//! counts in the helper's RSS for as long as it lives, although its steady state (relay a
//! log, wait, answer a request now and then) needs a small part of it. `madvise(MADV_DONTNEED)`
//! on a private file mapping that was never written drops this process's page table entries
//! and nothing else: the pages stay in the page cache, and the next access maps the same
//! bytes from the file again. So once started, a helper drops every clean mapping of its own
//! binary (its code, read-only data, the relocation table the static-pie start-up read once)
//! and keeps only what it touches afterwards. Mappings holding a private copy (relocated
//! pointers, `.data`) are never dropped: that copy would be lost.
//!
//! The binary's mappings are known by path (as /proc/self/exe names it), not by device and
//! inode: on overlayfs (a container image) /proc/self/smaps shows the lower file's numbers,
//! not those `stat` sees.

/// One mapping of `/proc/self/smaps` worth dropping: private, of the binary, not writable,
/// with no private (copied-on-write) page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    end: usize,
}

/// The clean, non-writable, private mappings of file `path` in an smaps text.
fn clean_mappings(smaps: &str, path: &str) -> Vec<CleanMapping> {
    let mut found = Vec::new();
    // The mapping being read: its range if it is the file's and not writable; whether a
    // private page was seen (Anonymous or Swap: a copy-on-write page; Private_Dirty is no
    // sign, it also counts file pages not yet written back).
    let mut current: Option<(CleanMapping, bool)> = None;
    let mut finish = |current: &mut Option<(CleanMapping, bool)>| {
        if let Some((m, false)) = current.take() {
            found.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            // A header: "start-end perms offset major:minor inode path".
            finish(&mut current);
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let _device = fields.next();
            let inode = fields.next().unwrap_or("0");
            // The path is the rest of the line after the inode (it may hold spaces).
            let named = line
                .split_once(&format!(" {inode} "))
                .is_some_and(|(_, rest)| rest.trim_start() == path);
            // Inode 0 is no file (the heap, stacks, [vdso]) whatever its name.
            let ours = inode != "0" && named;
            if ours && perms.len() == 4 && !perms.contains('w') && perms.ends_with('p') {
                current = Some((CleanMapping { start, end }, false));
            }
        } else if matches!(first, "Anonymous:" | "Swap:") {
            if let Some((_, dirty)) = current.as_mut() {
                if fields.next().is_some_and(|kb| kb != "0") {
                    *dirty = true;
                }
            }
        }
    }
    finish(&mut current);
    found
}

/// Drop this process's pages of its own binary's clean mappings, and give the allocator's
/// free memory back: what stays resident is what is touched from now on. Best effort: a
/// failure leaves the memory where it was and changes nothing else.
pub fn release_startup_pages() {
    let exe = std::fs::read_link("/proc/self/exe");
    let smaps = std::fs::read_to_string("/proc/self/smaps");
    if let (Ok(exe), Ok(smaps)) = (exe, smaps) {
        for m in clean_mappings(&smaps, &exe.to_string_lossy()) {
            // SAFETY: the range is a whole private mapping of this binary (which nothing
            // unmaps or remaps while it runs) that is not writable and holds no private page:
            // dropping it only unmaps pages the next access maps again, with the same bytes,
            // from the file.
            unsafe {
                libc::madvise(m.start as *mut _, m.end - m.start, libc::MADV_DONTNEED);
            }
        }
    }
    trim_heap();
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 1234   /usr/bin/cagerun
Size:               1024 kB
Rss:                 900 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fe:01 1234   /usr/bin/cagerun
Rss:                6000 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0a0900000-55d0a09b2000 r--p 00900000 fe:01 1234   /usr/bin/cagerun
Rss:                 712 kB
Private_Dirty:       712 kB
Anonymous:           712 kB
55d0a09b2000-55d0a09b9000 rw-p 009b2000 fe:01 1234   /usr/bin/cagerun
Anonymous:            28 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:01 999    /usr/lib/other.so
Anonymous:             0 kB
7f0000200000-7f0000300000 r--s 00000000 fe:01 1234   /usr/bin/cagerun
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
Anonymous:            60 kB
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0      [vvar]
Anonymous:             0 kB
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0      [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_private_mappings_of_the_binary_are_dropped() {
        let range = |start, end| CleanMapping { start, end };
        assert_eq!(
            clean_mappings(SMAPS, "/usr/bin/cagerun"),
            vec![
                // The binary's read-only data and code; not its relocated or writable data,
                // not a shared mapping of it, nothing of another file, nor [vvar] or [vdso].
                range(0x55d0a0000000, 0x55d0a0100000),
                range(0x55d0a0100000, 0x55d0a0900000),
            ]
        );
        assert_eq!(
            clean_mappings(SMAPS, "/usr/lib/other.so"),
            vec![range(0x7f0000000000, 0x7f0000100000)]
        );
        assert!(clean_mappings(SMAPS, "/usr/bin/cage").is_empty());
        assert!(clean_mappings(SMAPS, "[vdso]").is_empty());
    }

    #[test]
    fn a_swapped_out_private_page_keeps_the_mapping() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 1234   /usr/bin/cagerun
Anonymous:             0 kB
Swap:                  4 kB
";
        assert!(clean_mappings(smaps, "/usr/bin/cagerun").is_empty());
    }

    /// One test releasing at a time (another's release would unmap a page this one checks).
    static RELEASING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Whether the page holding `addr` is mapped in this process (/proc/self/pagemap, bit 63).
    fn page_present(addr: usize) -> bool {
        use std::os::unix::fs::FileExt;
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut entry = [0u8; 8];
        pagemap
            .read_exact_at(&mut entry, (addr / 4096 * 8) as u64)
            .unwrap();
        u64::from_le_bytes(entry) >> 63 == 1
    }

    #[test]
    fn the_binarys_clean_pages_are_given_back_and_come_back_the_same() {
        let _one = RELEASING.lock().unwrap();
        // 1 MiB of read-only data in the test binary's file mapping; a page in its middle
        // (fault-around maps at most 64 KiB around a touched page).
        static DATA: [u8; 1 << 20] = [7; 1 << 20];
        let probe = &DATA[DATA.len() / 2] as *const u8;
        // SAFETY: a valid reference; volatile so the read is not optimised away.
        assert_eq!(unsafe { std::ptr::read_volatile(probe) }, 7);
        assert!(
            page_present(probe as usize),
            "the probe page is mapped once read"
        );
        release_startup_pages();
        assert!(
            !page_present(probe as usize),
            "the probe page is still mapped"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { std::ptr::read_volatile(probe) }, 7);
        assert!(page_present(probe as usize));
    }

    /// The process goes on after its code was dropped: pages come back on use, with the same
    /// bytes, and relocated data (a static table of string slices) is intact.
    #[test]
    fn the_process_runs_on_after_a_release() {
        let _one = RELEASING.lock().unwrap();
        static WORDS: [&str; 3] = ["monitor", "holder", "supervisor"];
        let before: String = WORDS.concat();
        release_startup_pages();
        release_startup_pages();
        assert_eq!(WORDS.concat(), before);
        assert_eq!(
            format!("{:?}", WORDS),
            r#"["monitor", "holder", "supervisor"]"#
        );
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(!clean_mappings(&smaps, &exe.to_string_lossy()).is_empty());
    }
}
