//! The content-addressed blob store: `blobs/sha256/<hex>`, written only after the content
//! hashed to its name. Downloads land in `ingest/<hex>.partial` first; an interrupted one
//! resumes from where it stopped (the bytes already there are hashed again, not trusted).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hashing};
use crate::error::{io, ImageError, Result};

pub struct Store {
    root: PathBuf,
    naming: Naming,
}

/// How blobs are named on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `blobs/sha256/<hex>`, partial downloads in `ingest/<hex>.partial` (OCI layout style).
    Oci,
    /// `blobs/sha256-<hex>`, partial downloads beside them as `…-partial` (Ollama's models
    /// directory, which a real Ollama reads as is).
    Ollama,
}

impl Store {
    /// `$XDG_DATA_HOME/cagerun`, else `~/.local/share/cagerun`.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("cagerun");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".local/share/cagerun")
    }

    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, Naming::Oci)
    }

    pub fn open_with(root: &Path, naming: Naming) -> Result<Store> {
        let dirs: &[&str] = match naming {
            Naming::Oci => &["blobs/sha256", "ingest"],
            Naming::Ollama => &["blobs", "manifests"],
        };
        for d in dirs {
            fs::create_dir_all(root.join(d)).map_err(io(root.join(d), "creating the store"))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            naming,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        match self.naming {
            Naming::Oci => self.root.join("blobs/sha256").join(d.hex()),
            Naming::Ollama => self.root.join("blobs").join(format!("sha256-{}", d.hex())),
        }
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    fn partial_path(&self, d: &Digest) -> PathBuf {
        match self.naming {
            Naming::Oci => self
                .root
                .join("ingest")
                .join(format!("{}.partial", d.hex())),
            Naming::Ollama => self
                .root
                .join("blobs")
                .join(format!("sha256-{}-partial", d.hex())),
        }
    }

    /// Bytes of `d` already downloaded (to resume from).
    pub fn partial_len(&self, d: &Digest) -> u64 {
        fs::metadata(self.partial_path(d))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Start (or resume) writing blob `d`: what an interrupted download left is hashed
    /// again, not trusted, and the download continues at [`Ingest::offset`].
    pub fn begin(&self, d: &Digest, size: Option<u64>) -> Result<Ingest> {
        let partial = self.partial_path(d);
        let mut seen = Vec::new();
        if let Ok(mut f) = File::open(&partial) {
            f.read_to_end(&mut seen)
                .map_err(io(&partial, "reading the partial download"))?;
        }
        if size.is_some_and(|s| seen.len() as u64 > s) {
            seen.clear();
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(!seen.is_empty())
            .truncate(seen.is_empty())
            .open(&partial)
            .map_err(io(&partial, "writing the download"))?;
        Ok(Ingest {
            out: Hashing::resume(file, &seen),
            offset: seen.len() as u64,
            partial,
            blob: self.blob_path(d),
            digest: d.clone(),
            size,
        })
    }

    /// Add a blob. `fetch(offset)` gives the content from `offset` on (a resumed download
    /// asks for the rest). Verified against `d` (and `size` when known) before it becomes
    /// visible; a mismatch discards what was written.
    pub fn ingest(
        &self,
        d: &Digest,
        size: Option<u64>,
        fetch: impl FnOnce(u64) -> Result<Box<dyn Read>>,
    ) -> Result<PathBuf> {
        if self.has(d) {
            return Ok(self.blob_path(d));
        }
        let mut ingest = self.begin(d, size)?;
        if size == Some(ingest.offset()) {
            // Whole already (interrupted before the rename): only verify.
            return ingest.finish();
        }
        let mut source = fetch(ingest.offset())?;
        std::io::copy(&mut source, &mut ingest.out).map_err(io(&ingest.partial, "downloading"))?;
        ingest.finish()
    }

    /// Add a blob held in memory (manifests, configs).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        let data = bytes.to_vec();
        // From the offset asked: an interrupted write may have left part of it already.
        self.ingest(&d, Some(bytes.len() as u64), move |offset| {
            let mut c = std::io::Cursor::new(data);
            c.set_position(offset);
            Ok(Box::new(c))
        })?;
        Ok(d)
    }

    /// Read a blob, checking again that it still hashes to its name.
    pub fn read_verified(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let bytes = fs::read(&path).map_err(io(&path, "reading the blob"))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// A reader over a blob that fails at the end if the content does not match.
    pub fn open_verified(&self, d: &Digest) -> Result<VerifiedReader> {
        let path = self.blob_path(d);
        let f = File::open(&path).map_err(io(&path, "opening the blob"))?;
        Ok(VerifiedReader {
            inner: Some(Hashing::new(f)),
            expected: d.clone(),
        })
    }
}

/// A blob being written (see [`Store::begin`]).
pub struct Ingest {
    out: Hashing<File>,
    offset: u64,
    partial: PathBuf,
    blob: PathBuf,
    digest: Digest,
    size: Option<u64>,
}

impl Ingest {
    /// Bytes already there from an earlier, interrupted download.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        use std::io::Write;
        self.out
            .write_all(chunk)
            .map_err(io(&self.partial, "writing the download"))
    }

    /// The server ignored our range request and sends the whole blob again.
    pub fn restart(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.partial)
            .map_err(io(&self.partial, "restarting the download"))?;
        self.out = Hashing::new(file);
        self.offset = 0;
        Ok(())
    }

    /// Verify, then make the blob visible. A mismatch deletes the partial download.
    pub fn finish(self) -> Result<PathBuf> {
        let (file, actual, count) = self.out.finish();
        file.sync_all()
            .map_err(io(&self.partial, "syncing the download"))?;
        drop(file);
        if let Some(expected) = self.size {
            if count != expected {
                let _ = fs::remove_file(&self.partial);
                return Err(ImageError::SizeMismatch {
                    digest: self.digest.to_string(),
                    expected,
                    actual: count,
                });
            }
        }
        if actual != self.digest {
            let _ = fs::remove_file(&self.partial);
            return Err(ImageError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        fs::rename(&self.partial, &self.blob).map_err(io(&self.blob, "storing the blob"))?;
        Ok(self.blob)
    }
}

pub struct VerifiedReader {
    inner: Option<Hashing<File>>,
    expected: Digest,
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let n = inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let (_, actual, _) = self.inner.take().unwrap().finish();
            if actual != self.expected {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("blob {} was modified: it hashes to {actual}", self.expected),
                ));
            }
        }
        Ok(n)
    }
}
