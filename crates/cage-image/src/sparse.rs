//! Sparse files in layers: GNU tar's PAX formats (0.0, 0.1 and 1.0, which `tar --sparse
//! --format=posix` writes and Go's tar reader, umoci's, reads) and the old GNU type `S`
//! (which the tar crate reads, filling holes with zeros). Files are written with their
//! holes; maps are bounded and must stay inside the file's size.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// The most sparse map entries a file may list.
const MAX_SPARSE_BLOCKS: usize = 1 << 16;

/// A sparse file in GNU tar's PAX formats (0.0, 0.1, 1.0: `--sparse --format=posix`),
/// which Go's tar reader (umoci) reads: the stored data is the file's data blocks in order;
/// the map says where each goes. (The old GNU format, type `S`, the tar crate reads.)
pub(crate) struct PaxSparse {
    pub name: Option<Vec<u8>>,
    pub real_size: u64,
    /// None in format 1.0: the map leads the data.
    map: Option<Vec<(u64, u64)>>,
}

pub(crate) enum SparseError {
    Map(&'static str),
    Io(std::io::Error),
}

/// An entry's PAX records, as (key, value).
pub(crate) type PaxRecords = [(Vec<u8>, Vec<u8>)];

impl PaxSparse {
    pub fn of(pax: &PaxRecords) -> std::result::Result<Option<PaxSparse>, &'static str> {
        let get = |key: &[u8]| {
            pax.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        };
        let num = |v: &[u8]| -> std::result::Result<u64, &'static str> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or("a sparse file's map holds something other than numbers")
        };
        let major = get(b"GNU.sparse.major");
        let name = get(b"GNU.sparse.name").map(<[u8]>::to_vec);
        let size = get(b"GNU.sparse.realsize").or_else(|| get(b"GNU.sparse.size"));
        let map = if major == Some(b"1") {
            None
        } else if let Some(m) = get(b"GNU.sparse.map") {
            let nums = m
                .split(|b| *b == b',')
                .map(num)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if nums.len() % 2 != 0 || nums.len() / 2 > MAX_SPARSE_BLOCKS {
                return Err("a sparse file's map is malformed or too long");
            }
            Some(nums.chunks(2).map(|c| (c[0], c[1])).collect())
        } else if get(b"GNU.sparse.offset").is_some() {
            let offsets = pax.iter().filter(|(k, _)| k == b"GNU.sparse.offset");
            let lengths = pax.iter().filter(|(k, _)| k == b"GNU.sparse.numbytes");
            let map = offsets
                .zip(lengths)
                .map(|((_, o), (_, l))| Ok((num(o)?, num(l)?)))
                .collect::<std::result::Result<Vec<_>, &'static str>>()?;
            if map.len() > MAX_SPARSE_BLOCKS {
                return Err("a sparse file's map is too long");
            }
            Some(map)
        } else if major.is_some() {
            return Err("a sparse file in an unknown GNU sparse format");
        } else {
            return Ok(None);
        };
        let real_size = num(size.ok_or("a sparse file without its size")?)?;
        Ok(Some(PaxSparse {
            name,
            real_size,
            map,
        }))
    }

    /// Write the file: each block at its offset, holes left as holes. Returns its size.
    pub fn write(
        &self,
        data: &mut impl Read,
        file: &File,
    ) -> std::result::Result<u64, SparseError> {
        let map = match &self.map {
            Some(m) => m.clone(),
            None => read_sparse_map(data)?,
        };
        let mut end = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        for (offset, len) in map {
            let stop = offset
                .checked_add(len)
                .filter(|s| offset >= end && *s <= self.real_size)
                .ok_or(SparseError::Map(
                    "a sparse file's blocks overlap, go backwards or pass its size",
                ))?;
            let mut at = offset;
            while at < stop {
                let want = ((stop - at) as usize).min(buf.len());
                data.read_exact(&mut buf[..want]).map_err(SparseError::Io)?;
                file.write_all_at(&buf[..want], at)
                    .map_err(SparseError::Io)?;
                at += want as u64;
            }
            end = stop;
        }
        file.set_len(self.real_size).map_err(SparseError::Io)?;
        Ok(self.real_size)
    }
}

/// Format 1.0's map at the start of the data: decimal lines (the count, then offset and
/// length of each block), padded to a 512-byte block.
fn read_sparse_map(data: &mut impl Read) -> std::result::Result<Vec<(u64, u64)>, SparseError> {
    let mut consumed = 0usize;
    let mut line = |data: &mut dyn Read| -> std::result::Result<u64, SparseError> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            data.read_exact(&mut b).map_err(SparseError::Io)?;
            consumed += 1;
            match b[0] {
                b'\n' => break,
                d @ b'0'..=b'9' if digits.len() < 20 => digits.push(d),
                _ => return Err(SparseError::Map("a sparse file's map is malformed")),
            }
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(SparseError::Map("a sparse file's map is malformed"))
    };
    let count = line(data)? as usize;
    if count > MAX_SPARSE_BLOCKS {
        return Err(SparseError::Map("a sparse file's map is too long"));
    }
    let mut map = Vec::with_capacity(count);
    for _ in 0..count {
        map.push((line(data)?, line(data)?));
    }
    let pad = (512 - consumed % 512) % 512;
    std::io::copy(&mut data.take(pad as u64), &mut std::io::sink()).map_err(SparseError::Io)?;
    Ok(map)
}

/// Copy a GNU sparse file's data (the tar crate fills its holes with zeros), leaving runs of
/// zeros as holes. Returns the bytes copied, holes included.
pub(crate) fn copy_with_holes(data: &mut impl Read, file: &File) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            file.write_all_at(&buf[..n], at)?;
        }
        at += n as u64;
    }
    file.set_len(at)?;
    Ok(at)
}
