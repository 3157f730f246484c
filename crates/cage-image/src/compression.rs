//! Layer compression, told by the bytes (gzip, zstd, or a plain tar), not by the media
//! type alone: a mislabelled layer still unpacks, and a garbage one fails in the tar reader.

use std::io::{BufRead, BufReader, Read};

use crate::error::{ImageError, Result};

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

pub fn decompress<'a, R: Read + 'a>(reader: R) -> Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(1 << 16, reader);
    let head = buffered.fill_buf().map_err(ImageError::Archive)?;
    if head.starts_with(GZIP) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(ZSTD) {
        let dec = ruzstd::decoding::StreamingDecoder::new(buffered)
            .map_err(|e| ImageError::Format(format!("zstd layer: {e}")))?;
        Ok(Box::new(dec))
    } else {
        Ok(Box::new(buffered))
    }
}
