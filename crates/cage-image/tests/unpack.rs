//! Layer unpacking against crafted tars: the ordinary cases, whiteouts, and attacks that
//! must be refused without writing anything outside the target.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use cage_image::store::Store;
use cage_image::unpack::{apply_layer, UnpackOptions};
use cage_image::{Digest, ImageError};

#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    Char,
}

/// One raw tar entry: the name goes in unchecked, as an attacker would write it.
fn entry(out: &mut Vec<u8>, name: &[u8], kind: Kind, data: &[u8], link: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name);
        g.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(match kind {
        Kind::File => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink => tar::EntryType::Symlink,
        Kind::Hardlink => tar::EntryType::Link,
        Kind::Fifo => tar::EntryType::Fifo,
        Kind::Char => tar::EntryType::Char,
    });
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend([0u8; 1024]);
    out
}

fn apply(root: &Path, tar: &[u8]) -> Result<cage_image::unpack::UnpackReport, ImageError> {
    apply_layer(root, tar, &UnpackOptions::default())
}

/// root inside a parent we can inspect for escapes.
fn sandbox() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    (t, root)
}

#[test]
fn files_dirs_links_and_modes() {
    let (_t, root) = sandbox();
    let mut l = Vec::new();
    entry(&mut l, b"a/", Kind::Dir, b"", b"", 0o755);
    entry(&mut l, b"a/f", Kind::File, b"hello", b"", 0o4755);
    entry(&mut l, b"a/l", Kind::Symlink, b"", b"f", 0o777);
    entry(&mut l, b"a/h", Kind::Hardlink, b"", b"a/f", 0o644);
    entry(&mut l, b"p", Kind::Fifo, b"", b"", 0o644);
    entry(&mut l, b"dev/null", Kind::Char, b"", b"", 0o666);
    entry(&mut l, b"ro/", Kind::Dir, b"", b"", 0o555);
    entry(&mut l, b"ro/inside", Kind::File, b"x", b"", 0o644);
    let r = apply(&root, &finish(l)).unwrap();
    assert_eq!(fs::read_to_string(root.join("a/f")).unwrap(), "hello");
    let m = fs::metadata(root.join("a/f")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "setuid dropped");
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(fs::read_link(root.join("a/l")).unwrap(), Path::new("f"));
    assert_eq!(
        fs::metadata(root.join("a/h")).unwrap().ino(),
        m.ino(),
        "hardlink"
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(root.join("p"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(!root.join("dev/null").exists(), "device nodes skipped");
    assert_eq!(r.skipped_devices, 1);
    assert_eq!(
        fs::metadata(root.join("ro")).unwrap().mode() & 0o777,
        0o555,
        "dir mode applied last"
    );
    assert_eq!(fs::read_to_string(root.join("ro/inside")).unwrap(), "x");
    cage_image::layout::make_writable_and_remove(&root).unwrap();
}

#[test]
fn whiteouts_hide_lower_layers() {
    let (_t, root) = sandbox();
    let mut l1 = Vec::new();
    entry(&mut l1, b"a/b", Kind::File, b"1", b"", 0o644);
    entry(&mut l1, b"a/c", Kind::File, b"1", b"", 0o644);
    entry(&mut l1, b"d/x/y", Kind::File, b"1", b"", 0o644);
    apply(&root, &finish(l1)).unwrap();
    let mut l2 = Vec::new();
    entry(&mut l2, b"a/.wh.b", Kind::File, b"", b"", 0o644);
    entry(&mut l2, b"d/new", Kind::File, b"2", b"", 0o644);
    entry(&mut l2, b"d/.wh..wh..opq", Kind::File, b"", b"", 0o644);
    let r = apply(&root, &finish(l2)).unwrap();
    assert!(!root.join("a/b").exists());
    assert!(root.join("a/c").exists());
    assert!(!root.join("d/x").exists(), "opaque dir cleared");
    assert_eq!(
        fs::read_to_string(root.join("d/new")).unwrap(),
        "2",
        "this layer's own entries survive"
    );
    assert_eq!(r.whiteouts, 2);
}

fn assert_refused(tar: Vec<u8>, why: &str) {
    let (t, root) = sandbox();
    let err = apply(&root, &finish(tar)).unwrap_err().to_string();
    assert!(err.contains(why), "{err}");
    let outside: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("root")],
        "nothing written beside the target"
    );
}

#[test]
fn traversal_is_refused() {
    let mut l = Vec::new();
    entry(&mut l, b"../escape", Kind::File, b"x", b"", 0o644);
    assert_refused(l, "path traversal");
    let mut l = Vec::new();
    entry(&mut l, b"a/../../escape", Kind::File, b"x", b"", 0o644);
    assert_refused(l, "path traversal");
}

#[test]
fn absolute_names_land_inside_the_root_as_containerd_places_them() {
    // Probe validity: the name, taken as a host path, is writable outside the image.
    let name = format!("/tmp/cagerun-abs-escape-{}", std::process::id());
    fs::write(&name, "probe").unwrap();
    fs::remove_file(&name).unwrap();

    let (_t, root) = sandbox();
    let mut l = Vec::new();
    entry(&mut l, b"/", Kind::Dir, b"", b"", 0o755); // umoci insert ... / writes this
    entry(&mut l, name.as_bytes(), Kind::File, b"x", b"", 0o644);
    entry(&mut l, b"/../../etc/motd", Kind::File, b"m", b"", 0o644);
    entry(&mut l, b"./usr//bin/./tool", Kind::File, b"t", b"", 0o755);
    entry(
        &mut l,
        b"usr/lib/../share/doc",
        Kind::File,
        b"d",
        b"",
        0o644,
    );
    apply(&root, &finish(l)).unwrap();
    assert!(!Path::new(&name).exists(), "nothing written on the host");
    assert_eq!(
        fs::read(root.join(name.trim_start_matches('/'))).unwrap(),
        b"x"
    );
    assert_eq!(
        fs::read(root.join("etc/motd")).unwrap(),
        b"m",
        "a rooted .. stops at the root"
    );
    assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"t");
    assert_eq!(fs::read(root.join("usr/share/doc")).unwrap(), b"d");
    assert!(!root.join("usr/lib").exists(), "lib/.. cancels lexically");
    cage_image::layout::make_writable_and_remove(&root).unwrap();
}

#[test]
fn hardlinks_out_of_the_image_are_refused() {
    let mut l = Vec::new();
    entry(
        &mut l,
        b"hl",
        Kind::Hardlink,
        b"",
        b"../../../../etc/passwd",
        0o644,
    );
    assert_refused(l, "hardlink out of the image");
}

#[test]
fn an_absolute_hardlink_target_is_the_image_s_file_not_the_host_s() {
    let (_t, root) = sandbox();
    let mut l = Vec::new();
    entry(&mut l, b"etc/passwd", Kind::File, b"image\n", b"", 0o644);
    entry(&mut l, b"hl", Kind::Hardlink, b"", b"/etc/passwd", 0o644);
    apply(&root, &finish(l)).unwrap();
    use std::os::unix::fs::MetadataExt;
    let hl = fs::metadata(root.join("hl")).unwrap();
    assert_eq!(
        hl.ino(),
        fs::metadata(root.join("etc/passwd")).unwrap().ino()
    );
    assert_ne!(hl.ino(), fs::metadata("/etc/passwd").unwrap().ino());
    cage_image::layout::make_writable_and_remove(&root).unwrap();
}

#[test]
fn a_planted_symlink_cannot_carry_writes_outside() {
    let (t, root) = sandbox();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // Probe validity: outside the unpacker, writing through such a link does escape.
    std::os::unix::fs::symlink(&outside, t.path().join("probe-link")).unwrap();
    fs::write(t.path().join("probe-link/probe"), "x").unwrap();
    assert!(outside.join("probe").exists());
    fs::remove_file(outside.join("probe")).unwrap();

    let mut l1 = Vec::new();
    entry(
        &mut l1,
        b"abs",
        Kind::Symlink,
        b"",
        outside.to_str().unwrap().as_bytes(),
        0o777,
    );
    entry(
        &mut l1,
        b"rel",
        Kind::Symlink,
        b"",
        b"../../../../../../../..",
        0o777,
    );
    entry(&mut l1, b"usr/lib/", Kind::Dir, b"", b"", 0o755);
    entry(&mut l1, b"lib", Kind::Symlink, b"", b"/usr/lib", 0o777);
    apply(&root, &finish(l1)).unwrap();
    // Through a link that leads out: refused, nothing outside.
    for name in [&b"abs/pwned"[..], b"abs/sub/deep"] {
        let mut l2 = Vec::new();
        entry(&mut l2, name, Kind::File, b"x", b"", 0o644);
        let err = apply(&root, &finish(l2)).unwrap_err().to_string();
        assert!(
            err.contains("symlink that leads outside the image"),
            "{err}"
        );
    }
    // Links that resolve inside the image are followed there, as for a process rooted in it.
    let mut l3 = Vec::new();
    entry(&mut l3, b"rel/pwned-too", Kind::File, b"x", b"", 0o644);
    entry(&mut l3, b"lib/libx.so", Kind::File, b"x", b"", 0o644);
    apply(&root, &finish(l3)).unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(
        root.join("pwned-too").exists(),
        "../ stops at the image's root"
    );
    assert!(
        root.join("usr/lib/libx.so").exists(),
        "an absolute link resolves inside the image"
    );
    cage_image::layout::make_writable_and_remove(&root).unwrap();
}

#[test]
fn a_layer_shorter_than_its_headers_claim_fails() {
    let (_t, root) = sandbox();
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..4].copy_from_slice(b"huge");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    let mut l = h.as_bytes().to_vec();
    l.extend_from_slice(&[7u8; 4096]);
    assert!(apply(&root, &l).is_err());
    let limited = apply_layer(
        &root,
        &finish({
            let mut l = Vec::new();
            entry(&mut l, b"big", Kind::File, &[1u8; 4096], b"", 0o644);
            l
        })[..],
        &UnpackOptions {
            max_bytes: Some(1000),
            ..Default::default()
        },
    );
    assert!(matches!(limited, Err(ImageError::TooLarge { .. })));
}

#[test]
fn gzip_and_zstd_layers_unpack_the_same() {
    let mut l = Vec::new();
    entry(
        &mut l,
        b"etc/os-release",
        Kind::File,
        b"ID=cage\n",
        b"",
        0o644,
    );
    let plain = finish(l);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst =
        ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    for layer in [plain.clone(), gz, zst] {
        let (_t, root) = sandbox();
        apply(&root, &layer).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/os-release")).unwrap(),
            "ID=cage\n"
        );
    }
}

#[test]
fn the_store_keeps_only_verified_blobs_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let d = Digest::of(&data);
    // A wrong digest: refused, nothing kept.
    let wrong = Digest::of(b"something else");
    let bytes = data.clone();
    let err = store
        .ingest(&wrong, None, move |_| {
            Ok(Box::new(std::io::Cursor::new(bytes)))
        })
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(!store.has(&wrong));
    assert_eq!(store.partial_len(&wrong), 0);
    // An interrupted download: the first half is there; the rest is asked for from its offset.
    let half = data.len() / 2;
    fs::write(
        t.path().join("ingest").join(format!("{}.partial", d.hex())),
        &data[..half],
    )
    .unwrap();
    let rest = data[half..].to_vec();
    let asked = std::cell::Cell::new(u64::MAX);
    store
        .ingest(&d, Some(data.len() as u64), |offset| {
            asked.set(offset);
            Ok(Box::new(std::io::Cursor::new(rest)))
        })
        .unwrap();
    assert_eq!(asked.get(), half as u64);
    assert_eq!(store.read_verified(&d).unwrap(), data);
    // Bytes kept in memory (manifests, configs) resume too: a whole or half partial of them
    // is completed to exactly the blob, never appended to.
    let small = b"{\"schemaVersion\": 2}".to_vec();
    let sd = Digest::of(&small);
    for cut in [small.len(), small.len() / 2] {
        fs::write(
            t.path()
                .join("ingest")
                .join(format!("{}.partial", sd.hex())),
            &small[..cut],
        )
        .unwrap();
        assert_eq!(store.put_bytes(&small).unwrap(), sd);
        assert_eq!(store.read_verified(&sd).unwrap(), small);
        fs::remove_file(store.blob_path(&sd)).unwrap();
    }
    // A blob changed on disk afterwards is caught when read.
    let mut perms = fs::metadata(store.blob_path(&d)).unwrap().permissions();
    perms.set_mode(0o644);
    fs::write(store.blob_path(&d), b"tampered").unwrap();
    assert!(store.read_verified(&d).is_err());
}

#[test]
fn user_xattrs_are_kept_and_file_capabilities_are_not() {
    let (_t, root) = sandbox();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.origin", &b"cage"[..]),
        (
            "SCHILY.xattr.security.capability",
            &[
                1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
        ),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("ping").unwrap();
    h.set_size(4);
    h.set_mode(0o755);
    h.set_cksum();
    b.append(&h, &b"ping"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let r = apply(&root, &tar).unwrap();
    let get = |name: &str| {
        let path = std::ffi::CString::new(root.join("ping").to_str().unwrap()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 64];
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    };
    assert_eq!(get("user.origin").as_deref(), Some(&b"cage"[..]));
    assert_eq!(
        get("security.capability"),
        None,
        "no file capabilities from an image"
    );
    assert_eq!((r.xattrs, r.skipped_xattrs), (1, 1));
}

#[test]
fn with_chown_entries_get_the_images_owners() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "chown to other ids needs root here (or a mapped namespace, which the cagerun tests cover)"
    );
    let (_t, root) = sandbox();
    let mut l = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("app/f").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_cksum();
    l.extend_from_slice(h.as_bytes());
    l.extend_from_slice(b"x");
    l.extend(std::iter::repeat_n(0u8, 511));
    let mut big = tar::Header::new_gnu();
    big.set_path("odd").unwrap();
    big.set_size(0);
    big.set_mode(0o644);
    big.set_uid(70000);
    big.set_cksum();
    l.extend_from_slice(big.as_bytes());
    let r = apply_layer(
        &root,
        &finish(l)[..],
        &UnpackOptions {
            chown: true,
            ..Default::default()
        },
    )
    .unwrap();
    let m = fs::metadata(root.join("app/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(
        fs::metadata(&root).unwrap().uid(),
        0,
        "the image's root owns /"
    );
    assert_eq!(r.unmapped_owners, 1, "ids beyond 65535 are not given");
}

#[test]
fn a_layer_that_ends_right_after_its_last_file_s_data_reads_to_the_end() {
    // umoci 0.4.7's insert writes these: no padding after the last file, no end blocks.
    let (_t, root) = sandbox();
    let mut l = Vec::new();
    entry(&mut l, b"etc/motd", Kind::File, b"inserted\n", b"", 0o644);
    entry(&mut l, b"zlast", Kind::File, b"odd", b"", 0o644);
    l.truncate(l.len() - (512 - 3));
    assert_eq!(l.len() % 512, 3, "the probe layer ends unpadded");
    apply(&root, &l).unwrap();
    assert_eq!(fs::read(root.join("zlast")).unwrap(), b"odd");
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"inserted\n");
    // Data cut short is still an error, padded or not.
    let (_t2, root2) = sandbox();
    let mut l = Vec::new();
    entry(&mut l, b"cut", Kind::File, &[7u8; 700], b"", 0o644);
    l.truncate(512 + 600);
    let err = apply(&root2, &l).unwrap_err().to_string();
    assert!(err.contains("ends inside the entry"), "{err}");
}

#[test]
fn whiteouts_hide_lower_layers_never_the_same_layer_s_entries() {
    let (_t, root) = sandbox();
    let mut l1 = Vec::new();
    entry(&mut l1, b"d/a", Kind::File, b"old", b"", 0o644);
    entry(&mut l1, b"d/sub/old", Kind::File, b"old", b"", 0o644);
    entry(&mut l1, b"o/lower", Kind::File, b"old", b"", 0o644);
    apply(&root, &finish(l1)).unwrap();
    let mut l2 = Vec::new();
    entry(&mut l2, b"d/a", Kind::File, b"new", b"", 0o644);
    entry(&mut l2, b"d/.wh.a", Kind::File, b"", b"", 0o644);
    entry(&mut l2, b"d/sub/new", Kind::File, b"new", b"", 0o644);
    entry(&mut l2, b"d/.wh.sub", Kind::File, b"", b"", 0o644);
    entry(&mut l2, b"o/upper/x", Kind::File, b"new", b"", 0o644);
    entry(&mut l2, b"o/.wh..wh..opq", Kind::File, b"", b"", 0o644);
    entry(
        &mut l2,
        b"missing/deeper/.wh.x",
        Kind::File,
        b"",
        b"",
        0o644,
    );
    apply(&root, &finish(l2)).unwrap();
    assert_eq!(
        fs::read(root.join("d/a")).unwrap(),
        b"new",
        "written in this layer"
    );
    assert!(root.join("d/sub/new").exists(), "written in this layer");
    assert!(
        !root.join("d/sub/old").exists(),
        "a lower child of a kept dir goes"
    );
    assert!(root.join("o/upper/x").exists());
    assert!(
        !root.join("o/lower").exists(),
        "opaque: the lower child goes"
    );
    assert!(
        !root.join("missing").exists(),
        "a whiteout makes no directories"
    );
}

#[test]
fn the_root_entry_gives_the_root_its_mode_and_must_be_a_directory() {
    let (_t, root) = sandbox();
    let mut l = Vec::new();
    entry(&mut l, b"./", Kind::Dir, b"", b"", 0o750);
    entry(&mut l, b"f", Kind::File, b"x", b"", 0o644);
    apply(&root, &finish(l)).unwrap();
    let m = fs::metadata(&root).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o750, 1_700_000_000));
    let mut l = Vec::new();
    entry(&mut l, b"/", Kind::Symlink, b"", b"/etc", 0o777);
    assert_refused(l, "the image's root must be a directory");
}

/// A PAX sparse file (GNU tar's format 0.1) with the given map and data.
fn pax_sparse(name: &str, real_size: u64, map: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.size", real_size.to_string().as_bytes()),
        ("GNU.sparse.name", name.as_bytes()),
        ("GNU.sparse.map", map.as_bytes()),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("GNUSparseFile.1/x").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn pax_sparse_files_unpack_with_holes_and_hostile_maps_are_refused() {
    let (_t, root) = sandbox();
    apply(&root, &pax_sparse("s", 1 << 20, "0,2,4096,2", b"abcd")).unwrap();
    let got = fs::read(root.join("s")).unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert_eq!((&got[..2], &got[4096..4098]), (&b"ab"[..], &b"cd"[..]));
    assert!(got[2..4096].iter().all(|b| *b == 0));
    assert!(
        fs::metadata(root.join("s")).unwrap().blocks() < 64,
        "holes stay holes"
    );
    // Blocks past the file's size, or going backwards: refused.
    assert_refused(
        pax_sparse("s", 10, "0,2,4096,2", b"abcd"),
        "blocks overlap, go backwards or pass its size",
    );
    assert_refused(
        pax_sparse("s", 1 << 20, "4096,2,0,2", b"abcd"),
        "blocks overlap, go backwards or pass its size",
    );
    // The real name is checked like any other.
    assert_refused(
        pax_sparse("../../escape", 4, "0,4", b"abcd"),
        "path traversal",
    );
}

/// A plain layer made on the fly: a GNU long-name (`L`) entry claiming `size` bytes, its
/// data, then a small file. It samples the process's resident memory at every read, so
/// the highest value seen while the layer is consumed is known.
struct LongNameBomb {
    head: Vec<u8>,
    pos: u64,
    size: u64,
    tail: Vec<u8>,
    peak_rss: u64,
}

impl LongNameBomb {
    fn new(size: u64) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        let mut tail = vec![0u8; ((512 - size % 512) % 512) as usize];
        entry(&mut tail, b"after", Kind::File, b"x", b"", 0o644);
        LongNameBomb {
            head: h.as_bytes().to_vec(),
            pos: 0,
            size,
            tail: finish(tail),
            peak_rss: rss(),
        }
    }
}

impl std::io::Read for LongNameBomb {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.peak_rss = self.peak_rss.max(rss());
        let (head, size) = (self.head.len() as u64, self.size);
        let n = if self.pos < head {
            let s = &self.head[self.pos as usize..];
            let n = s.len().min(buf.len());
            buf[..n].copy_from_slice(&s[..n]);
            n
        } else if self.pos < head + size {
            let n = (head + size - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(b'a');
            n
        } else {
            let s = &self.tail[(self.pos - head - size).min(self.tail.len() as u64) as usize..];
            let n = s.len().min(buf.len());
            buf[..n].copy_from_slice(&s[..n]);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Resident memory of this process, in bytes (/proc/self/statm counts pages).
fn rss() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A 256 MiB long name is refused at its header, with the entry and the limit named,
/// while memory stays small. The probe is valid: the tar reader alone, fed the same
/// stream, holds the whole name in memory.
#[test]
fn an_oversized_long_name_is_refused_without_buffering_it() {
    const SIZE: u64 = 256 << 20;
    let (_t, root) = sandbox();
    let mut layer = LongNameBomb::new(SIZE);
    let before = layer.peak_rss;
    let err = apply_layer(&root, &mut layer, &UnpackOptions::default()).unwrap_err();
    let grew = layer.peak_rss - before;
    match &err {
        ImageError::MetadataTooLarge {
            offset,
            kind,
            size,
            limit,
        } => {
            assert_eq!((*offset, *size, *limit), (0, SIZE, 1 << 20));
            assert!(kind.contains("long name"), "{kind}");
        }
        other => panic!("expected MetadataTooLarge, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(
        shown.contains("at byte 0") && shown.contains("1048576-byte limit"),
        "{shown}"
    );
    assert!(grew < 64 << 20, "resident memory grew by {grew} bytes");
    assert!(
        fs::read_dir(&root).unwrap().next().is_none(),
        "something was written"
    );

    // Without the guard: the tar reader buffers the whole long name.
    let mut raw = LongNameBomb::new(SIZE);
    let before = raw.peak_rss;
    {
        let mut archive = tar::Archive::new(&mut raw);
        let first = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path_bytes().len() as u64, SIZE);
    }
    let held = raw.peak_rss - before;
    assert!(held > 200 << 20, "the probe held only {held} bytes");
}
