//! Helpers shared by the crash, corruption and concurrency tests: where batches sit in a
//! segment file, damaging real files, reading a log back batch by batch, and a seeded PRNG.

use cascade_log::LogReader;
use cascade_log::format::{FILE_HEADER_LEN, FileKind, segment_path};
use cascade_log::fs::{FileSystem, MemFs};
use cascade_log::record::{BatchHeader, Batches};
use std::path::{Path, PathBuf};

/// Where one batch sits in a `.log` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub pos: u64,
    pub len: u64,
    pub base: u64,
    pub last: u64,
}

impl Placed {
    pub fn holds_byte(&self, p: u64) -> bool {
        self.pos <= p && p < self.pos + self.len
    }
}

/// The batches of a whole `.log` file's contents, which must be intact.
pub fn batches_in(log_bytes: &[u8]) -> Vec<Placed> {
    let mut out = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < log_bytes.len() {
        let h = BatchHeader::parse(&log_bytes[at..]).expect("batch header");
        out.push(Placed {
            pos: at as u64,
            len: h.total_len() as u64,
            base: h.base_offset as u64,
            last: h.last_offset() as u64,
        });
        at += h.total_len();
    }
    assert_eq!(at, log_bytes.len(), "log file ends inside a batch");
    out
}

pub fn path_of(dir: &Path, base: u64, kind: FileKind) -> PathBuf {
    segment_path(dir, base, kind)
}

/// Base offsets of the segments (`.log` files) in a real directory, in order.
pub fn bases_on_disk(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|s| s.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

pub fn set_file_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// XORs the bytes at `at..at + n` of a file with 0xff.
pub fn flip_bytes(path: &Path, at: u64, n: usize) {
    let mut b = std::fs::read(path).unwrap();
    for x in &mut b[at as usize..at as usize + n] {
        *x ^= 0xff;
    }
    std::fs::write(path, b).unwrap();
}

/// Every stored batch from `from` to the end of the log, as (base offset, exact bytes).
pub fn raw_batches(r: &LogReader, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    let end = r.end_offset();
    while next < end {
        let f = r.read(next, 8192).expect("read");
        assert!(!f.data.is_empty(), "empty read at {next} below end {end}");
        for b in Batches::new(&f.data) {
            let b = b.expect("valid batch");
            let h = b.header();
            assert_eq!(h.base_offset as u64, next, "batches must run on densely");
            out.push((next, b.bytes().to_vec()));
            next = h.next_offset() as u64;
        }
        assert_eq!(next, f.next_offset);
    }
    out
}

/// A small deterministic PRNG (splitmix64), so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

pub fn mem_dir() -> &'static Path {
    Path::new("/data/t-0")
}

/// Base offset of the newest `.log` in the MemFs log directory: the active segment.
pub fn active_base(fs: &MemFs) -> u64 {
    fs.read_dir(mem_dir())
        .unwrap()
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .max()
        .unwrap()
}
