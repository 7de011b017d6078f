//! On-disk names and the fixed headers of every file the log writes.
//!
//! Every `.log`, `.index` and `.timeindex` file starts with a 32-byte header:
//!
//! ```text
//! 0  8  magic         "CASC.LOG" | "CASC.IDX" | "CASC.TIX"
//! 8  4  version       u32 LE, currently 1
//! 12 4  reserved      zero
//! 16 8  base_offset   u64 LE, the segment's first offset (also in the file name)
//! 24 8  created_ms    i64 LE, when the segment was created (drives age-based roll)
//! ```
//!
//! File names are the base offset in 20 decimal digits, so a directory listing sorts in offset
//! order: `00000000000000001234.log`. The clean-shutdown marker `clean-shutdown` holds the
//! active segment's end state (see [`CleanMarker`]). Producer-state snapshots are named by the
//! offset they cover the same way, `00000000000000001234.producers` (written through
//! `00000000000000001234.producers.tmp`); their contents are
//! [`crate::ProducerStates::encode`]'s.

use std::path::{Path, PathBuf};

/// Length of every file header.
pub const FILE_HEADER_LEN: usize = 32;
/// Current version of the file formats.
pub const FORMAT_VERSION: u32 = 1;

/// Magic of `.log` files.
pub const LOG_MAGIC: [u8; 8] = *b"CASC.LOG";
/// Magic of `.index` files.
pub const INDEX_MAGIC: [u8; 8] = *b"CASC.IDX";
/// Magic of `.timeindex` files.
pub const TIME_INDEX_MAGIC: [u8; 8] = *b"CASC.TIX";
/// Magic of the clean-shutdown marker.
pub const MARKER_MAGIC: [u8; 8] = *b"CASC.CLN";

/// Name of the clean-shutdown marker in a log directory.
pub const CLEAN_MARKER: &str = "clean-shutdown";

/// Which of a segment's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Batches.
    Log,
    /// Dense offset index.
    Index,
    /// Sparse time index.
    TimeIndex,
}

impl FileKind {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Index => "index",
            Self::TimeIndex => "timeindex",
        }
    }

    /// The magic at the start of the file.
    pub fn magic(self) -> [u8; 8] {
        match self {
            Self::Log => LOG_MAGIC,
            Self::Index => INDEX_MAGIC,
            Self::TimeIndex => TIME_INDEX_MAGIC,
        }
    }
}

/// Path of a segment file in `dir`.
pub fn segment_path(dir: &Path, base: u64, kind: FileKind) -> PathBuf {
    dir.join(format!("{base:020}.{}", kind.extension()))
}

/// Parses a segment file name back into its base offset and kind.
pub fn parse_segment_name(name: &str) -> Option<(u64, FileKind)> {
    let (stem, ext) = name.split_once('.')?;
    let kind = match ext {
        "log" => FileKind::Log,
        "index" => FileKind::Index,
        "timeindex" => FileKind::TimeIndex,
        _ => return None,
    };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, kind))
}

/// Extension of producer-state snapshot files.
pub const SNAPSHOT_EXTENSION: &str = "producers";

/// Path of the producer-state snapshot covering the log below `offset`.
pub fn snapshot_path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("{offset:020}.{SNAPSHOT_EXTENSION}"))
}

/// Path a snapshot is written to before it is renamed into place.
pub fn snapshot_tmp_path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("{offset:020}.{SNAPSHOT_EXTENSION}.tmp"))
}

/// Parses a snapshot file name: its offset, and whether it is a leftover temporary file.
pub fn parse_snapshot_name(name: &str) -> Option<(u64, bool)> {
    let (stem, ext) = name.split_once('.')?;
    let tmp = match ext.strip_prefix(SNAPSHOT_EXTENSION)? {
        "" => false,
        ".tmp" => true,
        _ => return None,
    };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, tmp))
}

/// The decoded header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Which kind of file the magic says it is.
    pub kind: FileKind,
    /// First offset of the segment.
    pub base_offset: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

impl FileHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[0..8].copy_from_slice(&self.kind.magic());
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        b
    }

    /// Decodes and checks a header of the expected kind; the error says what is wrong.
    pub fn decode(b: &[u8], kind: FileKind) -> Result<Self, String> {
        if b.len() < FILE_HEADER_LEN {
            return Err(format!("file header truncated ({} bytes)", b.len()));
        }
        if b[0..8] != kind.magic() {
            return Err(format!("bad magic {:?}", String::from_utf8_lossy(&b[0..8])));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(format!("unsupported format version {version}"));
        }
        Ok(Self {
            kind,
            base_offset: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            created_ms: i64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        })
    }
}

/// What the clean-shutdown marker vouches for: the active segment was fsynced with exactly this
/// end state and its indexes are complete, so opening need not rescan it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanMarker {
    /// Base offset of the active segment.
    pub active_base: u64,
    /// Log end offset.
    pub next_offset: u64,
    /// Length of the active segment's `.log` file.
    pub log_len: u64,
    /// Largest record timestamp in the active segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
}

/// Name of the file holding the log's recovery point: the end offset last made durable
/// (fsynced). Rewritten in place after every fsync, without an fsync of its own: after a
/// crash it may be older than the truth (never newer), which only makes recovery less strict.
/// Recovery uses it to tell damage from a torn tail: a bad batch below it was on stable
/// storage and has gone bad since, it was not torn by the crash.
pub const RECOVERY_POINT: &str = "recovery-point";
/// Magic of the recovery-point file.
pub const RECOVERY_MAGIC: [u8; 8] = *b"CASC.RCP";
/// Length of the encoded recovery point: magic, the offset (u64 LE), CRC-32C.
pub const RECOVERY_LEN: usize = 8 + 8 + 4;

/// Encodes a recovery point.
pub fn encode_recovery_point(offset: u64) -> [u8; RECOVERY_LEN] {
    let mut b = [0u8; RECOVERY_LEN];
    b[0..8].copy_from_slice(&RECOVERY_MAGIC);
    b[8..16].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a recovery point, or `None` if the bytes are not a whole, undamaged one.
pub fn decode_recovery_point(b: &[u8]) -> Option<u64> {
    if b.len() != RECOVERY_LEN || b[0..8] != RECOVERY_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    (crc == crc32c::crc32c(&b[..16])).then(|| u64::from_le_bytes(b[8..16].try_into().expect("8")))
}

/// Length of the encoded marker: magic, four u64 fields, CRC-32C.
pub const MARKER_LEN: usize = 8 + 4 * 8 + 4;

impl CleanMarker {
    /// Encodes the marker with a trailing CRC-32C.
    pub fn encode(&self) -> [u8; MARKER_LEN] {
        let mut b = [0u8; MARKER_LEN];
        b[0..8].copy_from_slice(&MARKER_MAGIC);
        b[8..16].copy_from_slice(&self.active_base.to_le_bytes());
        b[16..24].copy_from_slice(&self.next_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.log_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.max_timestamp.to_le_bytes());
        let crc = crc32c::crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a marker, or `None` if it is damaged in any way (then the log is recovered as
    /// after a crash, which is always safe).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != MARKER_LEN || b[0..8] != MARKER_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[40..44].try_into().ok()?);
        if crc != crc32c::crc32c(&b[..40]) {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            active_base: u(8),
            next_offset: u(16),
            log_len: u(24),
            max_timestamp: u(32) as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_points_round_trip_and_damage_is_refused() {
        let b = encode_recovery_point(123_456);
        assert_eq!(decode_recovery_point(&b), Some(123_456));
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert_eq!(decode_recovery_point(&bad), None, "flipped byte {i}");
        }
        assert_eq!(decode_recovery_point(&b[..RECOVERY_LEN - 1]), None);
        assert_eq!(decode_recovery_point(&[]), None);
    }

    #[test]
    fn names_round_trip_and_sort() {
        let p = segment_path(Path::new("/x"), 1234, FileKind::Index);
        assert_eq!(p, Path::new("/x/00000000000000001234.index"));
        assert_eq!(
            parse_segment_name("00000000000000001234.index"),
            Some((1234, FileKind::Index))
        );
        assert_eq!(parse_segment_name("1234.log"), None);
        assert_eq!(parse_segment_name("0000000000000000123x.log"), None);
        assert_eq!(parse_segment_name("00000000000000001234.log.tmp"), None);
        let p = snapshot_path(Path::new("/x"), 1234);
        assert_eq!(p, Path::new("/x/00000000000000001234.producers"));
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(parse_snapshot_name(&name(p)), Some((1234, false)));
        let t = snapshot_tmp_path(Path::new("/x"), 5);
        assert_eq!(parse_snapshot_name(&name(t)), Some((5, true)));
        assert_eq!(parse_snapshot_name("00000000000000001234.producersx"), None);
        assert_eq!(
            parse_snapshot_name("00000000000000001234.producers.old"),
            None
        );
        assert_eq!(parse_snapshot_name("1234.producers"), None);
        assert_eq!(parse_snapshot_name("00000000000000001234.log"), None);
        assert_eq!(parse_segment_name("00000000000000001234.producers"), None);
    }

    #[test]
    fn header_and_marker_round_trip() {
        let h = FileHeader {
            kind: FileKind::TimeIndex,
            base_offset: 77,
            created_ms: -5,
        };
        assert_eq!(FileHeader::decode(&h.encode(), FileKind::TimeIndex), Ok(h));
        assert!(FileHeader::decode(&h.encode(), FileKind::Log).is_err());
        let m = CleanMarker {
            active_base: 1,
            next_offset: 2,
            log_len: 3,
            max_timestamp: i64::MIN,
        };
        let mut b = m.encode();
        assert_eq!(CleanMarker::decode(&b), Some(m));
        b[20] ^= 1;
        assert_eq!(CleanMarker::decode(&b), None);
    }
}
