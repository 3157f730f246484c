#!/usr/bin/env python3
"""The layer compatibility corpus for tests/layers.rs.

`build DIR`: writes an OCI layout DIR/L with one image (tag) per case, layers written the
way real tools write them (python's tarfile in GNU/PAX/ustar formats, GNU tar for sparse
files, umoci insert/repack), plus a docker archive DIR/foreign.tar, and prints the cases
as JSON: [{name, tag, ref, refused, umoci_refuses, no_mtime, root_entry}]. `ref` is the tag
umoci unpacks as the reference (the same image unless umoci cannot read it, e.g. zstd, or
cagerun deliberately leaves a layer out, e.g. a foreign one).

`snapshot ROOT`: prints the tree below ROOT as JSON: path -> type, mode, size, sha256,
link target, hardlink group, uid, gid, xattrs, mtime (seconds).
"""

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

T0 = 1_600_000_000  # mtimes in the corpus: fixed, so umoci and cagerun can be compared
CAP_NET_RAW_V2 = bytes([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZ = LAYER_TAR + "+gzip"
LAYER_ZST = LAYER_TAR + "+zstd"
FOREIGN_OCI = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
FOREIGN_DOCKER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


# ---------------------------------------------------------------- tar entries


def ti(name, kind="f", data=b"", mode=None, uid=0, gid=0, mtime=T0, link="", xattrs=None,
       major=0, minor=0):
    t = tarfile.TarInfo(name)
    t.type = {
        "f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
        "h": tarfile.LNKTYPE, "p": tarfile.FIFOTYPE, "c": tarfile.CHRTYPE,
        "b": tarfile.BLKTYPE,
    }[kind]
    t.mode = mode if mode is not None else (0o755 if kind == "d" else 0o644)
    t.uid, t.gid, t.mtime = uid, gid, mtime
    t.uname = t.gname = ""
    t.linkname = link
    t.devmajor, t.devminor = major, minor
    t.size = len(data) if kind == "f" else 0
    if xattrs:
        # Binary values go through surrogateescape, as tarfile writes them back byte-exact.
        t.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                         for k, v in xattrs.items()}
    return (t, data)


def tar_of(entries, fmt=tarfile.PAX_FORMAT):
    """A tar of the entries; names are written exactly as given (no leading-/ stripping)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for t, data in entries:
            tf.addfile(t, io.BytesIO(data) if t.isreg() else None)
    return buf.getvalue()


def f(name, data=b"x\n", **kw):
    return ti(name, "f", data, **kw)


def d(name, **kw):
    return ti(name, "d", **kw)


# ---------------------------------------------------------------- the layout


class Layout:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs/sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as fh:
            json.dump({"imageLayoutVersion": "1.0.0"}, fh)
        self.index = []

    def blob(self, data, write=True):
        h = hashlib.sha256(data).hexdigest()
        if write:
            with open(os.path.join(self.path, "blobs/sha256", h), "wb") as fh:
                fh.write(data)
        return "sha256:" + h

    def image(self, tag, layers):
        """layers: [(uncompressed tar, how)], how: 'tar', 'gzip', 'zstd', 'empty-blob',
        'foreign', 'foreign-missing', 'foreign-docker'."""
        descs, diff_ids = [], []
        for raw, how in layers:
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
            if how == "tar" or how == "empty-blob":
                blob, mt = raw, LAYER_TAR
            elif how == "gzip":
                blob, mt = gzip.compress(raw, mtime=0), LAYER_GZ
            elif how == "zstd":
                blob = subprocess.run(["zstd", "-q", "-c"], input=raw, check=True,
                                      stdout=subprocess.PIPE).stdout
                mt = LAYER_ZST
            elif how.startswith("foreign"):
                blob = gzip.compress(raw, mtime=0)
                mt = FOREIGN_DOCKER if how == "foreign-docker" else FOREIGN_OCI
            else:
                raise ValueError(how)
            desc = {"mediaType": mt, "digest": self.blob(blob, how != "foreign-missing"),
                    "size": len(blob)}
            if how.startswith("foreign"):
                desc["urls"] = ["https://example.invalid/layer"]
            descs.append(desc)
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": self.blob(config), "size": len(config)},
            "layers": descs,
        }).encode()
        self.index.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.blob(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        })

    def save(self):
        with open(os.path.join(self.path, "index.json"), "w") as fh:
            json.dump({"schemaVersion": 2, "manifests": self.index}, fh)


def sh(cmd, cwd):
    subprocess.run(["sh", "-ec", cmd], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def gnu_tar(work, name, fill, args):
    """A layer GNU tar writes of the directory `fill` makes (members ./...)."""
    src = os.path.join(work, "src-" + name)
    os.makedirs(src)
    fill(src)
    out = subprocess.run(["tar", "-C", src, "--numeric-owner", "--owner=0", "--group=0",
                          "-cf", "-", *args, "."], check=True, stdout=subprocess.PIPE).stdout
    return out


def sparse_tree(src):
    os.chmod(src, 0o755)
    with open(os.path.join(src, "sparse"), "wb") as fh:
        fh.write(b"head")
        fh.seek(1 << 20)
        fh.write(b"middle" * 100)
        fh.seek(5 << 20)
        fh.write(b"tail")
        fh.truncate(8 << 20)  # ends in a hole
    with open(os.path.join(src, "plain"), "wb") as fh:
        fh.write(b"plain\n")
    for p in ["sparse", "plain", "."]:
        os.utime(os.path.join(src, p), (T0, T0))


# ---------------------------------------------------------------- the cases


def build(out):
    L = Layout(os.path.join(out, "L"))
    cases = []

    def case(name, layers, ref=None, ref_layers=None, refused=None, umoci_refuses=False,
             no_mtime=(), root_entry=False):
        L.image(name, layers)
        if ref_layers is not None:
            ref = name + "--ref"
            L.image(ref, ref_layers)
        cases.append({"name": name, "tag": name, "ref": ref or name, "refused": refused,
                      "umoci_refuses": umoci_refuses, "no_mtime": list(no_mtime),
                      "root_entry": root_entry})

    base = tar_of([d("etc/"), f("etc/base", b"base\n"), d("d/"), f("d/a", b"a\n"),
                   d("d/sub/"), f("d/sub/old", b"old\n")])

    # Names: leading / and ./ are the image's root.
    case("names-leading-slash", [(tar_of([d("/etc/"), f("/etc/hostname", b"h\n"),
                                          ti("/etc/link", "l", link="/etc/hostname")]), "tar")])
    case("names-leading-dot-slash", [(tar_of([d("./etc/"), f("./etc/hostname", b"h\n"),
                                              d("./usr/"), d("./usr/bin/"),
                                              f("./usr/bin/tool", b"t", mode=0o755)]), "tar")])
    # The root entry itself carries the root's mode, owner and mtime.
    case("root-entry-dot", [(tar_of([d("./", mode=0o750, uid=1234, gid=2345, mtime=T0 + 5),
                                     f("./etc", b"e\n")]), "tar")], root_entry=True)
    case("root-entry-slash", [(tar_of([d("/", mode=0o711, mtime=T0 + 7), d("/etc/"),
                                       f("/etc/x", b"x\n")]), "tar")], root_entry=True)
    # A root entry that is not a directory: umoci refuses it as malicious; so does cagerun.
    case("root-entry-symlink", [(tar_of([ti("/", "l", link="/tmp"), f("a")]), "tar")],
         refused="the image's root must be a directory", umoci_refuses=True)

    # Duplicates: the later entry wins.
    case("dup-file-file", [(tar_of([f("x", b"one\n"), f("x", b"two\n", mode=0o600)]), "tar")])
    case("dup-file-dir", [(tar_of([f("x", b"one\n"), d("x/", mode=0o700),
                                   f("x/c", b"c\n")]), "tar")])
    case("dup-dir-file", [(tar_of([d("x/"), f("x/c", b"c\n"), f("x", b"file\n")]), "tar")])
    case("dup-symlink-file", [(tar_of([f("t", b"t\n"), ti("x", "l", link="t"),
                                       f("x", b"file\n")]), "tar")])
    case("dup-file-symlink", [(tar_of([f("t", b"t\n"), f("x", b"file\n"),
                                       ti("x", "l", link="t")]), "tar")])
    case("dup-dir-dir-metadata", [(tar_of([d("x/", mode=0o755, mtime=T0), f("x/c"),
                                           d("x/", mode=0o700, uid=1000, mtime=T0 + 9)]), "tar")])

    # Hardlinks.
    case("hardlink-target-replaced", [(tar_of([
        f("a", b"first\n"), ti("b", "h", link="a"),
        f("a", b"second\n"),  # a new inode: b keeps the first content (umoci, containerd)
        ti("c", "h", link="a"),  # c links the new a
    ]), "tar")])
    case("hardlink-across-layers", [(tar_of([d("etc/"), f("etc/a", b"a\n", uid=1000)]), "tar"),
                                    (tar_of([ti("etc/b", "h", link="etc/a"),
                                             ti("c", "h", link="/etc/a")]), "tar")])
    case("hardlink-to-symlink", [(tar_of([f("t", b"t\n"), ti("s", "l", link="t"),
                                          ti("h", "h", link="s")]), "tar")])
    case("hardlink-replaced-by-file", [(tar_of([f("a", b"a\n"), ti("b", "h", link="a"),
                                                f("b", b"b\n")]), "tar")])

    # Whiteouts.
    case("whiteout-then-recreate-same-layer", [
        (base, "tar"),
        (tar_of([f("d/.wh.a", b""), f("d/a", b"new\n"), f("d/.wh.sub", b""),
                 d("d/sub/", mode=0o700), f("d/sub/new", b"n\n")]), "tar")],
        no_mtime=["d"])
    case("create-then-whiteout-same-layer", [
        (base, "tar"),
        # A whiteout hides lower layers only: what this layer wrote stays (umoci's upper
        # paths); lower children of a dir this layer touched still go.
        (tar_of([f("d/a", b"new\n"), f("d/.wh.a", b""), f("d/sub/new", b"n\n"),
                 f("d/.wh.sub", b"")]), "tar")],
        no_mtime=["d", "d/sub"])
    case("whiteout-then-recreate-later-layer", [
        (base, "tar"),
        (tar_of([f("d/.wh.a", b""), f("d/.wh.sub", b""), f("etc/.wh.base", b"")]), "tar"),
        (tar_of([f("d/a", b"again\n"), d("d/sub/", mode=0o750), f("etc/base", b"b2\n")]), "tar")],
        no_mtime=["d", "etc"])
    case("whiteout-of-missing-path", [
        (base, "tar"),
        (tar_of([f("nodir/deeper/.wh.x", b""), f("d/.wh.nothing", b"")]), "tar")])
    case("opaque-alone", [(base, "tar"),
                          (tar_of([d("d/", mtime=T0 + 3), f("d/.wh..wh..opq", b"")]), "tar")])
    case("opaque-then-children", [
        (base, "tar"),
        (tar_of([d("d/", mtime=T0 + 3), f("d/.wh..wh..opq", b""), f("d/new", b"n\n"),
                 d("d/sub/"), f("d/sub/n2", b"2\n")]), "tar")])
    case("children-then-opaque", [
        (base, "tar"),
        (tar_of([d("d/", mtime=T0 + 3), f("d/new", b"n\n"), f("d/sub/n2", b"2\n"),
                 f("d/.wh..wh..opq", b"")]), "tar")],
        no_mtime=["d/sub"])

    # Long names and link targets.
    long_dir = "p" * 120 + "/" + "q" * 120
    long_name = long_dir + "/" + "r" * 150
    long_target = "/" + "t" * 200 + "/" + "u" * 200
    for fmt, label in [(tarfile.PAX_FORMAT, "pax"), (tarfile.GNU_FORMAT, "gnu")]:
        case(f"long-names-{label}", [(tar_of([
            d("p" * 120 + "/"), d(long_dir + "/"), f(long_name, b"long\n"),
            ti(long_dir + "/sym", "l", link=long_target),
            ti(long_dir + "/" + "h" * 110, "h", link=long_name),
        ], fmt), "tar")])

    # Sparse files, in every format GNU tar writes them.
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    for v in ["0.0", "0.1", "1.0"]:
        case(f"sparse-pax-{v}", [(gnu_tar(work, "pax" + v, sparse_tree,
                                          ["--sparse", "--format=posix",
                                           f"--sparse-version={v}"]), "tar")],
             root_entry=True)
    # GNU tar's own sparse member type ('S', --format=gnu): umoci 0.4.7 (and containerd)
    # refuse the type; cagerun unpacks it as GNU tar does: the same tree as PAX 1.0's.
    case("sparse-gnu", [(gnu_tar(work, "gnu", sparse_tree, ["--sparse", "--format=gnu"]),
                         "tar")], ref="sparse-pax-1.0", umoci_refuses=True, root_entry=True)

    # Extended attributes: user.* kept; file capabilities and trusted.* never (see layers.rs).
    case("xattrs", [(tar_of([
        d("dir/", xattrs={"user.dir": b"on-dir"}),
        f("dir/f", xattrs={"user.one": b"1", "user.bin": bytes(range(0, 256, 17))}),
        f("ping", b"ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW_V2,
                                               "user.keep": b"k"}),
        f("trusted", xattrs={"trusted.x": b"t"}),
    ]), "tar")])
    case("xattrs-cleared-by-later-layer", [
        (tar_of([d("dir/", xattrs={"user.old": b"o"})]), "tar"),
        (tar_of([d("dir/", xattrs={"user.new": b"n"})]), "tar")])

    # Special files.
    case("devices-and-fifos", [(tar_of([
        d("dev/"), ti("dev/null", "c", mode=0o666, major=1, minor=3),
        ti("dev/loop9", "b", mode=0o660, gid=6, major=7, minor=9),
        ti("fifo", "p", mode=0o620, uid=1000, gid=1000, mtime=T0 + 1),
    ]), "tar")])

    # Empty layers.
    empty = tar_of([])
    case("empty-tar", [(empty, "tar")])
    case("empty-blob", [(b"", "empty-blob")])
    case("empty-tar-gzip", [(empty, "gzip")])
    case("empty-layers-between", [(base, "gzip"), (empty, "tar"), (b"", "empty-blob"),
                                  (tar_of([f("etc/top", b"top\n")]), "gzip")],
         no_mtime=["etc"])

    # Mode bits, owners, mtimes.
    case("modes", [(tar_of([
        f("suid", mode=0o4755), f("sgid", mode=0o2755), f("ugs", mode=0o6711),
        f("private", mode=0o600), f("none", mode=0o000),
        d("sticky/", mode=0o1777), d("setgid-dir/", mode=0o2775, gid=50),
        f("setgid-dir/f", gid=50), d("ro/", mode=0o555), f("ro/inside"),
    ]), "tar")])
    case("owners", [(tar_of([
        d("home/", mtime=T0 + 11), d("home/app/", uid=1000, gid=1000),
        f("home/app/f", uid=1000, gid=1000), f("home/other", uid=1001, gid=1002),
        f("low", uid=999, gid=998), f("nobody", uid=65534, gid=65534),
        ti("sym", "l", link="low", uid=1000, gid=1000), d("var/", uid=0, gid=50),
    ]), "tar")])
    case("owner-beyond-65535", [(tar_of([f("big", uid=70000, gid=70001)]), "tar")])
    case("mtimes", [(tar_of([
        d("old/", mtime=0), f("old/epoch", mtime=0), f("future", mtime=4_000_000_000),
        ti("sym", "l", link="future", mtime=T0 + 100),
    ]), "tar")])
    case("parent-mtime-kept", [(tar_of([d("etc/", mtime=T0 + 1), f("etc/a")]), "tar"),
                               (tar_of([f("etc/b"), f("etc/.wh.a", b"")]), "tar")])

    # Compression: the same tar as gzip, zstd and plain (umoci 0.4.7 reads no zstd: its
    # reference is the gzip image).
    mixed = tar_of([d("usr/"), f("usr/data", bytes(range(256)) * 64)])
    case("gzip", [(mixed, "gzip")])
    case("zstd", [(mixed, "zstd")], ref="gzip")
    case("uncompressed", [(mixed, "tar")])
    case("zstd-over-gzip", [(base, "gzip"), (tar_of([f("d/.wh.a", b""), f("zst", b"z")]),
                                             "zstd")],
         ref_layers=[(base, "gzip"), (tar_of([f("d/.wh.a", b""), f("zst", b"z")]), "gzip")],
         no_mtime=["d"])

    # Foreign / non-distributable layers: left out with a warning, the rest unpacks.
    top = tar_of([f("etc/top", b"top\n")])
    foreign = tar_of([f("windows", b"foreign\n")])
    for how in ["foreign", "foreign-missing", "foreign-docker"]:
        case(how, [(base, "gzip"), (foreign, how), (top, "gzip")],
             ref_layers=[(base, "gzip"), (top, "gzip")], no_mtime=["etc"])

    # A relative name whose .. leaves the root: umoci clamps it; cagerun refuses.
    case("relative-dotdot", [(tar_of([f("a/../../escape")]), "tar")],
         refused="path traversal")

    # Layers umoci writes: insert (no end-of-archive blocks, the last file unpadded) and
    # repack.
    L.save()
    src = os.path.join(out, "insert-src")
    os.makedirs(os.path.join(src, "etc"))
    with open(os.path.join(src, "etc/motd"), "w") as fh:
        fh.write("inserted\n")
    with open(os.path.join(src, "zlast"), "w") as fh:
        fh.write("odd")  # the last member, 3 bytes: its data ends the layer unpadded
    os.symlink("/etc/motd", os.path.join(src, "motd-link"))
    sh(f"umoci new --image L:umoci-insert && umoci insert --image L:umoci-insert {src} /"
       f" && umoci new --image L:umoci-insert-dir"
       f" && umoci insert --image L:umoci-insert-dir {src} /opt/app", out)
    sh("umoci new --image L:umoci-repack && umoci unpack --image L:umoci-repack B"
       " && mkdir B/rootfs/etc && echo one > B/rootfs/etc/a && echo two > B/rootfs/etc/b"
       " && ln B/rootfs/etc/a B/rootfs/etc/a-hard && mkfifo B/rootfs/fifo"
       " && umoci repack --image L:umoci-repack B && rm B/rootfs/etc/b && rm -r B/rootfs/fifo"
       " && echo three > B/rootfs/etc/c && umoci repack --image L:umoci-repack B"
       " && rm -rf B", out)
    with open(os.path.join(out, "L/index.json")) as fh:
        L.index = json.load(fh)["manifests"]
    for tag in ["umoci-insert", "umoci-insert-dir", "umoci-repack"]:
        # insert at /opt/app writes no entry for /opt: umoci makes it, at unpack time.
        cases.append({"name": tag, "tag": tag, "ref": tag, "refused": None,
                      "umoci_refuses": False, "root_entry": tag == "umoci-insert",
                      "no_mtime": ["opt"] if tag == "umoci-insert-dir" else []})

    # The same foreign layer in a docker archive (docker save's LayerSources).
    docker_archive(os.path.join(out, "foreign.tar"), [base, foreign, top])
    cases.append({"name": "docker-archive-foreign", "tag": None, "ref": "foreign--ref",
                  "refused": None, "umoci_refuses": False, "no_mtime": ["etc"],
                  "root_entry": False, "archive": "foreign.tar"})
    json.dump(cases, sys.stdout, indent=1)


def docker_archive(path, layers):
    """docker save's format; the middle layer is foreign (LayerSources), its file absent."""
    files, diff_ids, sources = {}, [], {}
    for i, raw in enumerate(layers):
        did = "sha256:" + hashlib.sha256(raw).hexdigest()
        diff_ids.append(did)
        if i == 1:
            sources[did] = {"mediaType": FOREIGN_DOCKER, "size": len(raw), "digest": did,
                            "urls": ["https://example.invalid/layer"]}
        else:
            files[f"{did[7:]}/layer.tar"] = raw
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    files[cname] = config
    manifest = [{"Config": cname, "RepoTags": ["foreign:1"],
                 "Layers": [f"{did[7:]}/layer.tar" for did in diff_ids],
                 "LayerSources": sources}]
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            t = tarfile.TarInfo(name)
            t.size = len(data)
            t.mode = 0o644
            tf.addfile(t, io.BytesIO(data))
    os.chmod(path, 0o644)


# ---------------------------------------------------------------- snapshots


def snapshot(root):
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        names = dirnames + filenames
        if dirpath == root:
            names = [""] + names
        for n in names:
            p = os.path.join(dirpath, n) if n else root
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            m = st.st_mode
            kind = ("d" if stat.S_ISDIR(m) else "f" if stat.S_ISREG(m) else
                    "l" if stat.S_ISLNK(m) else "p" if stat.S_ISFIFO(m) else
                    "c" if stat.S_ISCHR(m) else "b" if stat.S_ISBLK(m) else "?")
            e = {"type": kind, "mode": oct(stat.S_IMODE(m)) if kind != "l" else "",
                 "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime),
                 "size": st.st_size if kind == "f" else 0, "sha256": "", "link": "",
                 "xattrs": {}, "ino": st.st_ino if kind != "d" and st.st_nlink > 1 else 0}
            if kind == "f":
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                e["sha256"] = h.hexdigest()
            if kind == "l":
                e["link"] = os.readlink(p)
            if kind in "dfl":
                try:
                    for x in os.listxattr(p, follow_symlinks=False):
                        e["xattrs"][x] = os.getxattr(p, x, follow_symlinks=False).hex()
                except OSError:
                    pass
            if kind in "cb":
                e["size"] = st.st_rdev
            out[rel] = e
            if e["ino"]:
                inodes.setdefault(e["ino"], []).append(rel)
    # Hardlink identity: every path of an inode names its group by the group's first path.
    for paths in inodes.values():
        for p in paths:
            out[p]["hardlink"] = min(paths) if len(paths) > 1 else ""
    for e in out.values():
        e.setdefault("hardlink", "")
        del e["ino"]
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(sys.argv[2])
    elif sys.argv[1] == "snapshot":
        snapshot(sys.argv[2])
    else:
        sys.exit("usage: layer_corpus.py build DIR | snapshot ROOT")
