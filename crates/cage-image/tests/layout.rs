//! An OCI layout with a multi-platform index: the import picks this machine's platform.

use std::fs;
use std::io::Write;
use std::path::Path;

use cage_image::layout::{import_oci_layout, unpack_image};
use cage_image::store::Store;
use cage_image::unpack::UnpackOptions;
use cage_image::Digest;

fn put(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let d = Digest::of(bytes);
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    (d.to_string(), bytes.len())
}

fn host_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    }
}

#[test]
fn an_index_resolves_to_this_machines_platform() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("hello").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append(&h, &b"hi\n"[..]).unwrap();
    let plain = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let (layer, layer_size) = put(&dir, &gz.finish().unwrap());
    let config = serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&plain).to_string()]},
        "config": {"Cmd": ["/hello"]}
    });
    let (cfg, cfg_size) = put(&dir, config.to_string().as_bytes());
    let manifest = |layer: &str, size: usize| {
        serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": size}]
        })
        .to_string()
    };
    let (real, real_size) = put(&dir, manifest(&layer, layer_size).as_bytes());
    // The other platform's manifest names a layer that is not there: picking it would fail.
    let missing = Digest::of(b"not in this layout").to_string();
    let (decoy, decoy_size) = put(&dir, manifest(&missing, 10).as_bytes());
    let other = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": decoy, "size": decoy_size, "platform": {"architecture": other, "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": real, "size": real_size, "platform": {"architecture": host_arch(), "os": "linux"}}
        ]
    });
    let (idx, idx_size) = put(&dir, index.to_string().as_bytes());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx, "size": idx_size,
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    });
    fs::write(dir.join("index.json"), top.to_string()).unwrap();

    let store = Store::open(&t.path().join("store")).unwrap();
    let image = import_oci_layout(&store, &dir, Some("multi")).unwrap();
    assert_eq!(image.manifest.to_string(), real);
    assert_eq!(
        image
            .layers
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        vec![layer]
    );
    let target = t.path().join("rootfs/multi");
    unpack_image(&store, &image, &target, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read_to_string(target.join("hello")).unwrap(), "hi\n");
    // An unknown tag names the tags there are.
    let err = import_oci_layout(&store, &dir, Some("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no image tagged"), "{err}");
}

/// Removing an image tree never follows a link in it: a symlink to a directory outside
/// (whose mode a path walk would change, and whose files it would delete) is unlinked, and
/// the directory, its mode and its file stay as they were. The probe is valid: the link
/// does reach the outside directory by a plain path walk.
#[test]
fn removing_a_tree_unlinks_its_symlinks_and_touches_nothing_outside() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), "host file").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o555)).unwrap();
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("ro/deep")).unwrap();
    fs::write(tree.join("ro/deep/f"), "x").unwrap();
    symlink(&outside, tree.join("ro/link")).unwrap();
    symlink(outside.join("keep"), tree.join("file-link")).unwrap();
    fs::set_permissions(tree.join("ro/deep"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    assert_eq!(
        fs::read_to_string(tree.join("ro/link/keep")).unwrap(),
        "host file"
    );

    cage_image::layout::make_writable_and_remove(&tree).unwrap();

    assert!(!tree.exists());
    assert_eq!(
        fs::read_to_string(outside.join("keep")).unwrap(),
        "host file"
    );
    let mode = fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o555, "the outside directory's mode changed");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `max_bytes` bounds what all of an image's layers write together: two layers of 600
/// bytes each pass a 1000-byte limit one at a time, and the image does not; nothing is
/// left at the target.
#[test]
fn the_byte_limit_spans_all_of_an_images_layers() {
    use cage_image::unpack::apply_layer;
    use cage_image::ImageError;
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(&t.path().join("store")).unwrap();
    let layer = |name: &str| {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(600);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, &[7u8; 600][..]).unwrap();
        tar.into_inner().unwrap()
    };
    let (a, b) = (layer("a"), layer("b"));
    let limited = UnpackOptions {
        max_bytes: Some(1000),
        ..Default::default()
    };
    // Each layer alone is within the limit.
    for l in [&a, &b] {
        let root = tempfile::tempdir().unwrap();
        apply_layer(root.path(), &l[..], &limited).unwrap();
    }
    let image = cage_image::layout::Image {
        manifest: Digest::of(b"manifest"),
        config_digest: Digest::of(b"config"),
        config: Default::default(),
        layers: vec![store.put_bytes(&a).unwrap(), store.put_bytes(&b).unwrap()],
    };
    let target = t.path().join("rootfs/two");
    let err = unpack_image(&store, &image, &target, &limited).unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { limit: 1000 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("CAGERUN_MAX_IMAGE_BYTES"), "{err}");
    assert!(!target.exists());
    let left: Vec<_> = fs::read_dir(t.path().join("rootfs")).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Without a limit it unpacks.
    unpack_image(&store, &image, &target, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(target.join("b")).unwrap(), [7u8; 600]);
}
