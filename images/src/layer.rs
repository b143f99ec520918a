//! A layer blob as the snapshotter's tar stream: decompressed (gzip, zstd or none) and checked against
//! the image config's diff id when the stream ends.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::Digest as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the descriptor's media type; `None` when the type says nothing (then sniff).
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Whether the diff id check failed, for the caller's error message.
#[derive(Clone, Default)]
pub struct DiffIdMismatch(Arc<AtomicBool>);

impl DiffIdMismatch {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wraps the decompressed stream: at EOF, a digest other than `diff_id` turns into an error.
struct DiffIdReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    expected: String,
    flag: DiffIdMismatch,
    done: bool,
}

impl<R: Read> Read for DiffIdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            let actual = format!("sha256:{}", hex::encode(std::mem::take(&mut self.hasher).finalize()));
            if actual != self.expected {
                self.flag.0.store(true, Ordering::SeqCst);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "uncompressed layer has digest {actual}, the image config says {}",
                        self.expected
                    ),
                ));
            }
            self.done = true;
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Picks the decompressor on the first read (sniffing may have to wait for data: never on an async thread).
struct Decompress {
    blob: Option<Box<dyn Read + Send>>,
    media_type: String,
    inner: Option<Box<dyn Read + Send>>,
}

impl Read for Decompress {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.is_none() {
            let blob = self.blob.take().expect("a blob or a decoder");
            let mut buffered = BufReader::with_capacity(256 * 1024, blob);
            let compression = match Compression::from_media_type(&self.media_type) {
                Some(c) => c,
                None => Compression::sniff(buffered.fill_buf()?),
            };
            self.inner = Some(match compression {
                Compression::None => Box::new(buffered),
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
                Compression::Zstd => Box::new(
                    ruzstd::decoding::StreamingDecoder::new(buffered)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
                ),
            });
        }
        self.inner.as_mut().expect("decoder").read(buf)
    }
}

/// The uncompressed tar stream of a layer blob, verified against `diff_id` at its end.
pub fn tar_stream(
    blob: impl Read + Send + 'static,
    media_type: &str,
    diff_id: &str,
) -> (Box<dyn Read + Send>, DiffIdMismatch) {
    let plain = Decompress {
        blob: Some(Box::new(blob)),
        media_type: media_type.to_string(),
        inner: None,
    };
    let flag = DiffIdMismatch::default();
    let reader = DiffIdReader {
        inner: plain,
        hasher: sha2::Sha256::new(),
        expected: diff_id.to_string(),
        flag: flag.clone(),
        done: false,
    };
    (Box::new(reader), flag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_plain_verify_the_diff_id() {
        let tar = b"pretend this is a tar".to_vec();
        let diff = berth_core::model::sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        for (blob, mt) in [
            (gz.clone(), "application/vnd.oci.image.layer.v1.tar+gzip"),
            (gz, "application/octet-stream"),
            (tar.clone(), "application/vnd.docker.image.rootfs.diff.tar"),
        ] {
            let (mut r, flag) = tar_stream(io::Cursor::new(blob.clone()), mt, &diff);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, tar);
            assert!(!flag.happened());
            let (mut r, flag) = tar_stream(io::Cursor::new(blob), mt, "sha256:00");
            assert!(r.read_to_end(&mut Vec::new()).is_err());
            assert!(flag.happened());
        }
    }
}
