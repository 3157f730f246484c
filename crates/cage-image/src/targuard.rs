//! A reader below the `tar` crate that refuses oversized metadata entries before the tar
//! reader buffers them.
//!
//! The `tar` crate reads the whole data of a GNU long name or long link (`L`, `K`) and of a
//! PAX extended header (`x`; and `g` when the unpacker asks for its records) into memory,
//! sized by the entry's own header: a hostile layer (a gzip bomb inflating to one `L` entry
//! of gigabytes) would exhaust memory before the unpacker sees an entry. [`TarGuard`]
//! follows the archive's structure as the bytes pass, unchanged, and fails the read that
//! completes the header of such an entry larger than [`MAX_METADATA_BYTES`].
//!
//! It walks the archive exactly as `tar` 0.4 does, so the two agree on where every header
//! is: 512-byte headers; the size field in octal, or base-256 (high bit set: `tar` takes the
//! field's last 8 bytes); data rounded up to 512; a PAX `size` record of an `x` header (one
//! in ustar or GNU format) overrides the size of the member it describes; a GNU sparse `S`
//! header whose `isextended` byte (offset 482) is 1 is followed by 512-byte extension
//! blocks, each continued while its own flag (offset 504) is 1, and then by the header's
//! size field of data. The tar reader keeps a record for each chunk those blocks list
//! (21 a block), so they too may add up to [`MAX_METADATA_BYTES`] and no more (43,000
//! chunks; cagerun's PAX sparse maps stop at 65,536). `tar` stops at the first zero block; the guard stops looking after
//! two in a row (the end of an archive), or at a header it cannot parse (the tar reader
//! fails on it). A layer that simply ends, without end blocks or padding (umoci's
//! `insert`), ends here too: the guard passes the end through and judges nothing.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// The largest `L`, `K`, `x` or `g` entry accepted. A long name or link is a path (Linux's
/// PATH_MAX is 4096 bytes); a PAX header holds a few such paths and the `SCHILY.xattr.*`
/// records of one file, whose values the kernel caps at 64 KiB each. 1 MiB is far above
/// any real image and keeps what one hostile entry can make us hold small.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

const BLOCK: usize = 512;

/// A metadata entry over the limit: where it starts in the uncompressed layer, what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Byte offset of its header in the uncompressed tar stream.
    pub offset: u64,
    pub kind: &'static str,
    pub size: u64,
    pub limit: u64,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} entry at byte {} of the layer claims {} bytes, over the {}-byte limit on tar metadata entries",
            self.kind, self.offset, self.size, self.limit
        )
    }
}

fn kind_name(typeflag: u8) -> Option<&'static str> {
    match typeflag {
        b'L' => Some("GNU long name (L)"),
        b'K' => Some("GNU long link (K)"),
        b'x' => Some("PAX extended header (x)"),
        b'g' => Some("PAX global header (g)"),
        _ => None,
    }
}

enum State {
    /// The next 512 bytes are a header.
    Header,
    /// The next 512 bytes are a GNU sparse extension block; `data` (padded) follows them;
    /// `bytes` of extension blocks came before it.
    SparseExt { data: u64, bytes: u64 },
    /// `left` bytes of data and padding; the first `keep` of them are a PAX header's records.
    Data { left: u64, keep: u64 },
    /// Past the end, or past something the tar reader will refuse: pass bytes through.
    Done,
}

pub struct TarGuard<R> {
    inner: R,
    limit: u64,
    state: State,
    block: [u8; BLOCK],
    /// Bytes of `block` read from `inner`, and handed on.
    filled: usize,
    served: usize,
    /// Offset in the stream of the next byte read from `inner`.
    offset: u64,
    zero_blocks: u32,
    /// The PAX `size` record of an `x` header that still describes the coming member.
    pax_size: Option<u64>,
    records: Vec<u8>,
    refused: Rc<Cell<Option<Refused>>>,
}

impl<R: Read> TarGuard<R> {
    /// The guard, and where it leaves its refusal (the tar reader sees only an I/O error).
    pub fn new(inner: R, limit: u64) -> (Self, Rc<Cell<Option<Refused>>>) {
        let refused = Rc::new(Cell::new(None));
        let guard = TarGuard {
            inner,
            limit,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            served: 0,
            offset: 0,
            zero_blocks: 0,
            pax_size: None,
            records: Vec::new(),
            refused: refused.clone(),
        };
        (guard, refused)
    }

    /// Read one whole block into `block`; false if the stream ended before it was whole.
    fn fill_block(&mut self) -> io::Result<bool> {
        self.filled = 0;
        self.served = 0;
        while self.filled < BLOCK {
            match self.inner.read(&mut self.block[self.filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.filled == BLOCK)
    }

    /// Decide what follows the header now in `block`.
    fn on_header(&mut self) -> Result<(), Refused> {
        let h = &self.block;
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            self.state = if self.zero_blocks >= 2 {
                State::Done
            } else {
                State::Header
            };
            return Ok(());
        }
        self.zero_blocks = 0;
        let typeflag = h[156];
        let magic = (&h[257..263], &h[263..265]);
        let recognized = magic == (b"ustar\0", b"00") || magic == (b"ustar ", b" \0");
        let Some(mut size) = size_field(&h[124..136]) else {
            self.state = State::Done;
            return Ok(());
        };
        let metadata = kind_name(typeflag);
        let pending = self.pax_size.take();
        match metadata {
            None => size = pending.unwrap_or(size),
            // A recognized L/K/x is folded into the member that follows: an earlier `x`
            // still describes it. A `g` or an unrecognized one is returned as a member.
            Some(_) if recognized && typeflag != b'g' => self.pax_size = pending,
            Some(_) => {}
        }
        if let Some(kind) = metadata {
            if size > self.limit {
                return Err(Refused {
                    offset: self.offset - BLOCK as u64,
                    kind,
                    size,
                    limit: self.limit,
                });
            }
        }
        let keep = if typeflag == b'x' && recognized {
            self.records = Vec::with_capacity(size as usize);
            size
        } else {
            0
        };
        let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
        self.state = if typeflag == b'S' && h[482] == 1 {
            State::SparseExt {
                data: padded,
                bytes: 0,
            }
        } else {
            State::Data { left: padded, keep }
        };
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(r) = self.refused.take() {
                self.refused.set(Some(r.clone()));
                return Err(io::Error::other(r.to_string()));
            }
            if self.served < self.filled {
                let n = (self.filled - self.served).min(buf.len());
                buf[..n].copy_from_slice(&self.block[self.served..self.served + n]);
                self.served += n;
                return Ok(n);
            }
            match self.state {
                State::Done => return self.inner.read(buf),
                State::Data { left: 0, .. } => {
                    if !self.records.is_empty() {
                        self.pax_size = pax_size(&self.records);
                        self.records = Vec::new();
                    }
                    self.state = State::Header;
                }
                State::Data { left, keep } => {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = self.inner.read(&mut buf[..want])?;
                    let kept = keep.min(n as u64);
                    self.records.extend_from_slice(&buf[..kept as usize]);
                    self.offset += n as u64;
                    self.state = State::Data {
                        left: left - n as u64,
                        keep: keep - kept,
                    };
                    return Ok(n);
                }
                State::Header => {
                    if !self.fill_block()? {
                        self.state = State::Done;
                    } else if let Err(r) = self.on_header() {
                        tracing::debug!("refusing the layer: {r}");
                        self.refused.set(Some(r));
                    }
                }
                State::SparseExt { data, bytes } => {
                    let bytes = bytes + BLOCK as u64;
                    if !self.fill_block()? {
                        self.state = State::Done;
                    } else if bytes > self.limit {
                        // The tar reader keeps a record per chunk these blocks list.
                        self.refused.set(Some(Refused {
                            offset: self.offset - BLOCK as u64,
                            kind: "GNU sparse (S) extension blocks",
                            size: bytes,
                            limit: self.limit,
                        }));
                    } else if self.block[504] != 1 {
                        self.state = State::Data {
                            left: data,
                            keep: 0,
                        };
                    } else {
                        self.state = State::SparseExt { data, bytes };
                    }
                }
            }
        }
    }
}

/// A header's size field as `tar` 0.4 reads it (`num_field_wrapper_from`), or None where
/// it fails (and so does the tar reader).
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256: `tar` takes the last 8 bytes of the 12, big-endian.
        let tail: [u8; 8] = field[field.len() - 8..].try_into().ok()?;
        return Some(u64::from_be_bytes(tail));
    }
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).ok()?;
    u64::from_str_radix(text.trim(), 8).ok()
}

/// The `size` record of PAX records, as `tar` 0.4 finds it (`pax_extensions_value`): the
/// first one, read until a malformed record.
fn pax_size(records: &[u8]) -> Option<u64> {
    for line in records.split(|b| *b == b'\n') {
        if line.is_empty() {
            return None;
        }
        let space = line.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
        if line.len() + 1 != len {
            return None;
        }
        let kv = &line[space + 1..];
        let eq = kv.iter().position(|b| *b == b'=')?;
        if &kv[..eq] != b"size" {
            // `tar` skips a key that is not valid UTF-8 as it skips any other key.
            continue;
        }
        return std::str::from_utf8(&kv[eq + 1..]).ok()?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = MAX_METADATA_BYTES;

    fn header(name: &[u8], typeflag: u8, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h
    }

    fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }

    /// Everything the guard lets through, in small reads, or its refusal.
    fn pass(bytes: &[u8]) -> (Vec<u8>, Option<Refused>) {
        let (mut g, refused) = TarGuard::new(bytes, LIMIT);
        let mut out = Vec::new();
        let mut buf = [0u8; 333]; // not a divisor of 512: reads straddle blocks
        loop {
            match g.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    let r = refused.take().expect("an error is a refusal");
                    assert!(e.to_string().contains(&r.limit.to_string()));
                    return (out, Some(r));
                }
            }
        }
    }

    /// A header claiming `size` bytes, followed by only a little data: the guard must
    /// refuse on the header alone.
    fn oversized(typeflag: u8, size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        push(&mut out, &header(b"a", b'0', 3), b"abc");
        push(&mut out, &header(b"././@LongLink", typeflag, size), b"x");
        out
    }

    #[test]
    fn oversized_metadata_entries_are_refused_at_their_header() {
        for (flag, kind) in [
            (b'L', "GNU long name (L)"),
            (b'K', "GNU long link (K)"),
            (b'x', "PAX extended header (x)"),
            (b'g', "PAX global header (g)"),
        ] {
            let (out, refused) = pass(&oversized(flag, LIMIT + 1));
            let r = refused.unwrap_or_else(|| panic!("{kind} passed"));
            assert_eq!(
                r,
                Refused {
                    offset: 1024,
                    kind,
                    size: LIMIT + 1,
                    limit: LIMIT
                }
            );
            // The first member passed whole; not a byte of the refused header did.
            assert_eq!(out.len(), 1024);
            // At the limit, it passes.
            let at = oversized(flag, LIMIT);
            assert_eq!(pass(&at), (at.clone(), None));
        }
    }

    #[test]
    fn a_base_256_size_is_read_as_tar_reads_it() {
        let mut h = header(b"././@LongLink", b'L', 0);
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&(5u64 << 30).to_be_bytes());
        h.as_old_mut().size = field;
        h.set_cksum();
        assert_eq!(h.entry_size().unwrap(), 5 << 30);
        let mut l = Vec::new();
        push(&mut l, &h, b"");
        let (_, refused) = pass(&l);
        assert_eq!(refused.unwrap().size, 5 << 30);

        // A regular member sized base-256 is followed correctly: the `L` after it is seen.
        let mut l = Vec::new();
        let mut h = header(b"f", b'0', 0);
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 3;
        h.as_old_mut().size = field;
        h.set_cksum();
        push(&mut l, &h, b"abc");
        push(&mut l, &header(b"././@LongLink", b'L', LIMIT * 2), b"");
        assert_eq!(pass(&l).1.unwrap().offset, 1024);
    }

    #[test]
    fn a_pax_size_moves_the_next_header_as_it_does_for_tar() {
        // `x` says the member has 1024 bytes though its header says 0; hidden in those
        // 1024 bytes, an `L` header that tar never reads as one (and the guard ignores),
        // then the real next header: an oversized `L`.
        let rec = b"13 size=1024\n";
        let mut l = Vec::new();
        push(&mut l, &header(b"pax", b'x', rec.len() as u64), rec);
        let mut data = header(b"decoy", b'L', LIMIT * 4).as_bytes().to_vec();
        data.resize(1024, 0);
        push(&mut l, &header(b"f", b'0', 0), &data);
        push(&mut l, &header(b"././@LongLink", b'L', LIMIT + 1), b"");
        let (_, refused) = pass(&l);
        assert_eq!(refused.unwrap().offset, 512 * 2 + 512 + 1024);
    }

    /// A real archive with everything the guard steps through (long names and links,
    /// PAX records, a global header, an old GNU sparse file with extension blocks) passes
    /// byte for byte, and tar reads every member of what passed.
    #[test]
    fn a_normal_archive_passes_unchanged() {
        let long = "d/".repeat(150) + "file";
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(5);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "t/".repeat(120)).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, "withxattr", &b"ok"[..]).unwrap();
        let mut out = b.into_inner().unwrap();
        out.truncate(out.len() - 1024); // the end blocks `into_inner` wrote
                                        // A global header, then a GNU sparse file of 6 chunks: 4 in its header and an
                                        // extension block of 2, each chunk 512 bytes of data.
        push(&mut out, &header(b"glob", b'g', 14), b"14 comment=hi\n");
        let mut s = header(b"sparse", b'S', 6 * 512);
        {
            let g = s.as_gnu_mut().unwrap();
            for (i, chunk) in g.sparse.iter_mut().enumerate() {
                chunk.offset = tar_octal((i as u64) * 4096);
                chunk.numbytes = tar_octal(512);
            }
            g.isextended[0] = 1;
            g.realsize = tar_octal(5 * 4096 + 512);
        }
        s.set_cksum();
        out.extend_from_slice(s.as_bytes());
        let mut ext = [0u8; 512];
        for i in 0..2u64 {
            let at = i as usize * 24;
            ext[at..at + 12].copy_from_slice(&tar_octal((4 + i) * 4096));
            ext[at + 12..at + 24].copy_from_slice(&tar_octal(512));
        }
        out.extend_from_slice(&ext);
        for i in 0..6u8 {
            out.extend_from_slice(&[b'a' + i; 512]);
        }
        out.extend_from_slice(&[0u8; 1024]);
        let (passed, refused) = pass(&out);
        assert_eq!(refused, None);
        assert!(passed == out, "the archive changed on its way through");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&passed[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
            std::io::copy(&mut e, &mut std::io::sink()).unwrap();
        }
        assert_eq!(
            names,
            [long.as_str(), "link", "withxattr", "glob", "sparse"]
        );

        // The guard is in step after the sparse file: an oversized `L` there is refused.
        let mut bad = out[..out.len() - 1024].to_vec();
        push(&mut bad, &header(b"././@LongLink", b'L', LIMIT + 1), b"");
        let (_, refused) = pass(&bad);
        assert_eq!(refused.unwrap().offset as usize, out.len() - 1024);
    }

    #[test]
    fn endless_sparse_extension_blocks_are_refused() {
        let mut s = header(b"sparse", b'S', 0);
        s.as_gnu_mut().unwrap().isextended[0] = 1;
        s.set_cksum();
        let mut l = s.as_bytes().to_vec();
        let mut ext = [0u8; 512];
        ext[504] = 1;
        for _ in 0..(LIMIT / 512 + 10) {
            l.extend_from_slice(&ext);
        }
        let r = pass(&l).1.unwrap();
        assert_eq!((r.offset, r.size), (512 + LIMIT, LIMIT + 512));
        assert!(r.kind.contains("sparse"));
        // Ended at the limit, they pass.
        let end = 512 + LIMIT as usize;
        l[end - 512 + 504] = 0;
        l.truncate(end);
        assert_eq!(pass(&l), (l.clone(), None));
    }

    #[test]
    fn a_layer_that_just_ends_passes() {
        // umoci's `insert`: no padding after the last data, no end blocks.
        let mut l = Vec::new();
        push(&mut l, &header(b"a", b'0', 3), b"abc");
        l.extend_from_slice(header(b"b", b'0', 5).as_bytes());
        l.extend_from_slice(b"hello");
        assert_eq!(pass(&l), (l.clone(), None));
        // Cut inside a header: passed through; the tar reader judges it.
        let cut = &l[..700];
        assert_eq!(pass(cut), (cut.to_vec(), None));
    }

    fn tar_octal(v: u64) -> [u8; 12] {
        let mut f = [0u8; 12];
        let s = format!("{v:011o}");
        f[..11].copy_from_slice(s.as_bytes());
        f
    }
}
