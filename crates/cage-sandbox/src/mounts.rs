//! Mount options: OCI option strings → `mount(2)` flags and data. Decides only; the
//! syscalls are in [`crate::rootfs`].

use nix::mount::MsFlags;

use crate::error::{Result, SandboxError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// Bind a host path (absolute, resolved by the plan). `recursive` = rbind.
    /// `beneath`: the source is below this directory and hostile code can write there, so
    /// the part below it is resolved beneath the directory's descriptor (openat2
    /// RESOLVE_IN_ROOT), never by a host path walk (see [`crate::beneath`]).
    Bind {
        source: std::path::PathBuf,
        recursive: bool,
        beneath: Option<std::path::PathBuf>,
    },
    /// A fresh kernel filesystem: proc, sysfs, tmpfs, devpts, mqueue.
    Fs { fstype: String, source: String },
}

#[derive(Debug, Clone)]
pub struct MountStep {
    pub destination: std::path::PathBuf,
    pub kind: MountKind,
    /// Flags for the final (re)mount: MS_RDONLY, MS_NOSUID, ...
    pub flags: MsFlags,
    /// Filesystem data (`size=`, `mode=`, `newinstance`, ...); never for binds.
    pub data: String,
}

impl MountStep {
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }
}

const FS_TYPES: &[&str] = &["proc", "sysfs", "tmpfs", "devpts", "mqueue"];

/// Split OCI options into flags and data. Unknown options pass as data for kernel
/// filesystems (the kernel refuses what it does not know) and are refused for binds.
pub fn parse_options(options: &[String], is_bind: bool) -> Result<(MsFlags, bool, String)> {
    let mut flags = MsFlags::empty();
    let mut recursive = false;
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "bind" => {}
            "rbind" => recursive = true,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "private" | "rprivate" | "slave" | "rslave" => {}
            other if is_bind => {
                return Err(SandboxError::Unsupported {
                    field: format!("bind mount option {other:?}"),
                })
            }
            other => data.push(other.to_string()),
        }
    }
    Ok((flags, recursive, data.join(",")))
}

pub fn is_supported_fs(fstype: &str) -> bool {
    FS_TYPES.contains(&fstype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_split() {
        let opts: Vec<String> = ["nosuid", "ro", "mode=755", "size=64k"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, r, d) = parse_options(&opts, false).unwrap();
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert!(!r);
        assert_eq!(d, "mode=755,size=64k");
    }

    #[test]
    fn unknown_bind_options_are_refused() {
        assert!(parse_options(&["idmap".to_string()], true).is_err());
    }
}
