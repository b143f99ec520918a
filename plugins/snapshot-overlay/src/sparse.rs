//! Sparse files in a layer: their holes stay holes on disk, so a 10 GiB file of a few written blocks takes a
//! few blocks (what containerd does too: Go's archive/tar seeks over holes when it writes to a file).
//!
//! GNU tar `--sparse` writes two encodings:
//! - **GNU sparse entries** (type `S`, `--format=gnu`): the tar crate reads their map and yields the whole
//!   file with its holes as zeros; [`copy_with_holes`] seeks over the all-zero reads instead of writing them.
//! - **PAX sparse files** (`--format=posix`, versions 0.0, 0.1 and 1.0): the tar crate (0.4.46) knows nothing
//!   of them and would unpack the packed data (for 1.0 the map too) as a regular file, for 0.1 and 1.0 under
//!   a `GNUSparseFile.<pid>/` directory: a silently wrong file. [`PaxSparse`] reads their records and map
//!   as Go's archive/tar does (`readGNUSparsePAXHeaders`, `validateSparseEntries`) and writes the data
//!   blocks at their offsets.
//!
//! Either way the unpack limit counts the real size, holes included (see `Unpacker::entry`): a layer cannot
//! get past `max_bytes` with holes, and a later dense copy of the file stays bounded by it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// A byte count of zeros to compare reads against (`==` on slices is a `memcmp`).
static ZEROS: [u8; 4096] = [0; 4096];

/// Why a PAX sparse file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    #[error("{key}: {value:?} is not a number")]
    Number { key: &'static str, value: String },
    #[error("unknown GNU sparse format version {major}.{minor}")]
    Version { major: String, minor: String },
    #[error("sparse map: {0}")]
    Map(&'static str),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl SparseError {
    /// True when the layer itself is at fault, false for I/O trouble.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, SparseError::Io { .. })
    }
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> SparseError {
    move |source| SparseError::Io { op, source }
}

/// Copies a GNU sparse entry's data (holes read as zeros) into `file`, seeking over every all-zero read
/// and setting the length at the end, so holes are not written. At most `room` bytes of the real size:
/// `None` when the file is larger. The tar crate keeps the sparse map to itself, but each of its reads
/// comes from one block of it (data or hole), so a hole is never written.
pub fn copy_with_holes(src: &mut impl Read, file: &mut File, room: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pos += n as u64;
        if pos > room {
            return Ok(None);
        }
        let chunk = &buf[..n];
        if chunk.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()]) {
            file.seek(SeekFrom::Current(n as i64))?;
        } else {
            file.write_all(chunk)?;
        }
    }
    file.set_len(pos)?;
    Ok(Some(pos))
}

/// Where a PAX sparse file's map is.
#[derive(Debug, PartialEq, Eq)]
enum Map {
    /// Versions 0.0 (`GNU.sparse.offset`/`numbytes` pairs) and 0.1 (`GNU.sparse.map`): in the records.
    Records(Vec<(u64, u64)>),
    /// Version 1.0: at the start of the entry's data, in decimal lines padded to 512 bytes.
    InData,
}

/// A PAX-format GNU sparse file, from its entry's PAX records.
#[derive(Debug, PartialEq, Eq)]
pub struct PaxSparse {
    /// `GNU.sparse.name` (0.1, 1.0): the real path; the header carries a `GNUSparseFile.<pid>/` one.
    pub name: Option<PathBuf>,
    /// The file's size, holes included.
    pub real_size: u64,
    map: Map,
}

fn number(key: &'static str, value: &[u8]) -> Result<u64, SparseError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SparseError::Number {
            key,
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

impl PaxSparse {
    /// From a regular entry's PAX records (in archive order); `None` when it is not a PAX sparse file.
    pub fn from_records(records: &[(String, Vec<u8>)]) -> Result<Option<PaxSparse>, SparseError> {
        let get = |key: &str| records.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice());
        let v1 = match (get("GNU.sparse.major"), get("GNU.sparse.minor")) {
            (Some(b"0"), Some(b"0" | b"1")) => false,
            (Some(b"1"), Some(b"0")) => true,
            (None, None) if get("GNU.sparse.map").is_some() || get("GNU.sparse.offset").is_some() => false,
            (None, None) => return Ok(None),
            (major, minor) => {
                let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
                return Err(SparseError::Version {
                    major: text(major),
                    minor: text(minor),
                });
            }
        };
        let real_size = match (get("GNU.sparse.size"), get("GNU.sparse.realsize")) {
            (Some(v), _) => number("GNU.sparse.size", v)?,
            (None, Some(v)) => number("GNU.sparse.realsize", v)?,
            (None, None) => return Err(SparseError::Map("no GNU.sparse.size or GNU.sparse.realsize record")),
        };
        let name = get("GNU.sparse.name").map(|n| PathBuf::from(String::from_utf8_lossy(n).into_owned()));
        let map = if v1 {
            Map::InData
        } else {
            Map::Records(records_map(records)?)
        };
        if let Map::Records(blocks) = &map {
            validate(blocks, real_size)?;
        }
        Ok(Some(PaxSparse { name, real_size, map }))
    }

    /// Writes the entry's data (`data`: the map first for 1.0, then the data blocks back to back) into the
    /// empty `file` at the map's offsets, and sets its length to the real size.
    pub fn write(&self, data: &mut impl Read, file: &mut File) -> Result<(), SparseError> {
        let read_map;
        let blocks = match &self.map {
            Map::Records(blocks) => blocks,
            Map::InData => {
                read_map = map_1_0(data)?;
                validate(&read_map, self.real_size)?;
                &read_map
            }
        };
        for &(offset, len) in blocks {
            if len == 0 {
                continue;
            }
            file.seek(SeekFrom::Start(offset)).map_err(io_err("seek in the file"))?;
            let copied = io::copy(&mut data.take(len), file).map_err(io_err("write the file"))?;
            if copied != len {
                return Err(SparseError::Map("the entry's data ends before its blocks do"));
            }
        }
        if data.read(&mut [0u8; 1]).map_err(io_err("read the entry"))? != 0 {
            return Err(SparseError::Map("the entry holds more data than its blocks"));
        }
        file.set_len(self.real_size).map_err(io_err("set the file's size"))?;
        Ok(())
    }
}

/// The 0.0 (`GNU.sparse.offset`, `GNU.sparse.numbytes` repeated) or 0.1 (`GNU.sparse.map=o,n,o,n…`) map.
fn records_map(records: &[(String, Vec<u8>)]) -> Result<Vec<(u64, u64)>, SparseError> {
    let mut numbers = Vec::new();
    for (key, value) in records {
        match key.as_str() {
            "GNU.sparse.offset" => numbers.push(number("GNU.sparse.offset", value)?),
            "GNU.sparse.numbytes" => numbers.push(number("GNU.sparse.numbytes", value)?),
            "GNU.sparse.map" if !value.is_empty() => {
                for v in value.split(|b| *b == b',') {
                    numbers.push(number("GNU.sparse.map", v)?);
                }
            }
            _ => {}
        }
    }
    if numbers.len() % 2 != 0 {
        return Err(SparseError::Map("an offset without a length"));
    }
    let blocks: Vec<(u64, u64)> = numbers.chunks(2).map(|p| (p[0], p[1])).collect();
    let count = records.iter().find(|(k, _)| k == "GNU.sparse.numblocks");
    if let Some((_, v)) = count
        && number("GNU.sparse.numblocks", v)? != blocks.len() as u64
    {
        return Err(SparseError::Map("GNU.sparse.numblocks does not match the blocks"));
    }
    Ok(blocks)
}

/// The 1.0 map at the start of the data: the block count, then offset and length of each, one decimal
/// number a line, padded with zeros to a multiple of 512 bytes. Reads whole 512-byte records only, so
/// `data` is left at the first data block.
fn map_1_0(data: &mut impl Read) -> Result<Vec<(u64, u64)>, SparseError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut next = || -> Result<u64, SparseError> {
        loop {
            if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let n = number("the 1.0 map", &buf[..nl])?;
                buf.drain(..=nl);
                return Ok(n);
            }
            if buf.len() > 20 {
                return Err(SparseError::Map("a number of the map is too long"));
            }
            let mut record = [0u8; 512];
            data.read_exact(&mut record).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => SparseError::Map("the map is truncated"),
                _ => SparseError::Io {
                    op: "read the sparse map",
                    source: e,
                },
            })?;
            buf.extend_from_slice(&record);
        }
    };
    let count = next()?;
    let mut blocks = Vec::new();
    for _ in 0..count {
        // No preallocation by `count`: it is the layer's word; each block costs at least 4 bytes of data.
        blocks.push((next()?, next()?));
    }
    Ok(blocks)
}

/// Blocks in order, not overlapping, inside the real size.
fn validate(blocks: &[(u64, u64)], real_size: u64) -> Result<(), SparseError> {
    let mut end = 0u64;
    for &(offset, len) in blocks {
        if offset < end {
            return Err(SparseError::Map("blocks out of order or overlapping"));
        }
        end = offset
            .checked_add(len)
            .filter(|e| *e <= real_size)
            .ok_or(SparseError::Map("a block ends past the file's size"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn records_of_each_version() {
        assert_eq!(PaxSparse::from_records(&recs(&[("path", "a")])).unwrap(), None);
        let v00 = recs(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "5"),
            ("GNU.sparse.offset", "50"),
            ("GNU.sparse.numbytes", "5"),
        ]);
        let v01 = recs(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.name", "d/f"),
            ("GNU.sparse.map", "0,5,50,5"),
        ]);
        for (r, name) in [(v00, None), (v01, Some(PathBuf::from("d/f")))] {
            let s = PaxSparse::from_records(&r).unwrap().unwrap();
            assert_eq!(s.name, name);
            assert_eq!(s.real_size, 100);
            assert_eq!(s.map, Map::Records(vec![(0, 5), (50, 5)]));
        }
        let v10 = recs(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "f"),
            ("GNU.sparse.realsize", "7"),
        ]);
        assert_eq!(PaxSparse::from_records(&v10).unwrap().unwrap().map, Map::InData);
    }

    #[test]
    fn bad_maps_are_refused() {
        for bad in [
            recs(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]),
            recs(&[("GNU.sparse.map", "0,5")]),
            recs(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,5,2,5")]),
            recs(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "8,5")]),
            recs(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,5,7")]),
            recs(&[("GNU.sparse.size", "10"), ("GNU.sparse.map", "0,x")]),
            recs(&[
                ("GNU.sparse.size", "10"),
                ("GNU.sparse.numblocks", "3"),
                ("GNU.sparse.map", "0,5"),
            ]),
            recs(&[("GNU.sparse.size", "-1"), ("GNU.sparse.map", "0,5")]),
            recs(&[("GNU.sparse.size", "99"), ("GNU.sparse.map", "18446744073709551615,2")]),
        ] {
            let err = PaxSparse::from_records(&bad).unwrap_err();
            assert!(err.is_refusal(), "{err}");
        }
    }

    #[test]
    fn a_1_0_map_is_read_from_whole_records() {
        let mut data = b"2\n0\n3\n600\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcde");
        let mut r = data.as_slice();
        assert_eq!(map_1_0(&mut r).unwrap(), vec![(0, 3), (600, 2)]);
        assert_eq!(r, b"abcde");
        let mut truncated: &[u8] = b"2\n0\n3\n";
        assert!(matches!(map_1_0(&mut truncated), Err(SparseError::Map(_))));
        let mut long = vec![b'1'; 512];
        long.extend_from_slice(&[b'1'; 512]);
        assert!(matches!(map_1_0(&mut long.as_slice()), Err(SparseError::Map(_))));
    }
}
