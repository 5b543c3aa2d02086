//! gzip for expositions, with one compressor kept between reads.
//!
//! A fresh compressor allocates and clears its window and hash tables
//! (hundreds of KiB) each time: under many scrapers that was a tenth of
//! a read's CPU, in memset and malloc, for an 8 KiB text. Resetting a kept
//! one clears only what the next stream needs.

use std::sync::{Mutex, PoisonError};

use flate2::{Compress, Compression, FlushCompress, Status};

/// The largest window zlib offers, as `GzEncoder` uses.
const WINDOW_BITS: u8 = 15;

/// A gzip compressor shared by the reads (one runs at a time, so the lock
/// is never contended).
pub struct Gzip {
    compress: Mutex<Compress>,
}

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gzip").finish_non_exhaustive()
    }
}

impl Default for Gzip {
    fn default() -> Self {
        Self {
            // Level 1: most of level 6's ratio on this text, at a fraction
            // of its time.
            compress: Mutex::new(Compress::new_gzip(Compression::fast(), WINDOW_BITS)),
        }
    }
}

impl Gzip {
    /// `plain` as one gzip member.
    pub fn compress(&self, plain: &[u8]) -> Result<Vec<u8>, flate2::CompressError> {
        // A panic mid-stream leaves a stream the reset below discards.
        let mut compress = self.compress.lock().unwrap_or_else(PoisonError::into_inner);
        compress.reset();
        let mut out = Vec::with_capacity(plain.len() / 4 + 64);
        loop {
            let consumed = usize::try_from(compress.total_in()).unwrap_or(usize::MAX);
            let input = plain.get(consumed..).unwrap_or_default();
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(1024));
            }
            match compress.compress_vec(input, &mut out, FlushCompress::Finish)? {
                Status::StreamEnd => return Ok(out),
                Status::Ok | Status::BufError => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn gunzip(gzipped: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut plain)
            .expect("valid gzip");
        plain
    }

    /// Each call is a whole gzip member on its own, whatever came before:
    /// empty, small, and larger than the first output buffer.
    #[test]
    fn every_call_is_a_complete_member() {
        let gzip = Gzip::default();
        let large: Vec<u8> = (0..200_000u32)
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect();
        for plain in [&b""[..], b"hostscope_up 1\n", &large, b"again\n"] {
            assert_eq!(gunzip(&gzip.compress(plain).unwrap()), plain);
        }
    }
}
