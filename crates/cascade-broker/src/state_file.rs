//! Small state files with a checksum: the Raft vote and snapshot, a partition's high
//! watermark checkpoint and durable offset, a topic directory's id.
//!
//! These files are read back as values (a term, a set of in-sync replicas, an offset, whose
//! data a directory holds), so a flipped bit that leaves them well-formed would silently
//! change what a node believes: a lower term lets a voter vote twice, a changed ISR lets a
//! stale replica lead, a changed topic id made the node delete the topic's data as an older
//! topic's. Each file therefore starts with a header line `cascade-state crc32c=XXXXXXXX`
//! (CRC-32C of the body, hex) and is written atomically ([`write_atomically`]).
//!
//! Invariants: [`read`] returns a body only if its checksum matches, and reports damage
//! ([`Content::Damaged`]) otherwise; a file without the header was written by a version before
//! this one and is returned as [`Content::Legacy`], for the caller to accept only if it parses
//! as exactly what it expects (a header hit by a flip is not a legacy file to trust).
//!
//! All IO goes through a [`FileSystem`], the one the caller's data lives on, so the testing
//! layers (a kill as a power cut, injected disk faults) reach these files as they reach the
//! logs beside them.

use crate::error::{BrokerError, Result};
use cascade_log::fs::FileSystem;
use std::path::Path;

const HEADER: &[u8] = b"cascade-state crc32c=";
/// Header, 8 hex digits, newline.
const HEADER_LEN: usize = HEADER.len() + 9;

/// What a state file held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Content {
    /// No such file.
    Missing,
    /// A body whose checksum matches.
    Checked(Vec<u8>),
    /// A file without the header (written before checksums): trust it only if it parses.
    Legacy(Vec<u8>),
    /// The header is there and the body does not match it; says why.
    Damaged(String),
}

impl Content {
    /// The body of a checked file, or of a legacy one that `accept` takes; `Err` with why
    /// otherwise; `Ok(None)` for a missing file.
    pub(crate) fn body_if(
        self,
        accept: impl Fn(&[u8]) -> bool,
    ) -> std::result::Result<Option<Vec<u8>>, String> {
        match self {
            Content::Missing => Ok(None),
            Content::Checked(b) => Ok(Some(b)),
            Content::Legacy(b) if accept(&b) => Ok(Some(b)),
            Content::Legacy(_) => Err("no checksum header and not a valid old-format file".into()),
            Content::Damaged(why) => Err(why),
        }
    }
}

/// Reads `path`, checking its checksum. IO errors other than "not found" are errors.
pub(crate) fn read(fs: &dyn FileSystem, path: &Path) -> std::io::Result<Content> {
    Ok(match read_whole(fs, path)? {
        None => Content::Missing,
        Some(bytes) => decode(bytes),
    })
}

/// The whole of `path`, or `None` if there is no such file.
pub(crate) fn read_whole(fs: &dyn FileSystem, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = vec![0; file.len()? as usize];
    let n = file.read_full_at(&mut bytes, 0)?;
    bytes.truncate(n);
    Ok(Some(bytes))
}

fn decode(bytes: Vec<u8>) -> Content {
    if !bytes.starts_with(HEADER) {
        return Content::Legacy(bytes);
    }
    if bytes.len() < HEADER_LEN || bytes[HEADER_LEN - 1] != b'\n' {
        return Content::Damaged("its checksum header is cut short".into());
    }
    // Lower-case only, as written: a flip that turns `a` into `A` must not pass.
    let hex = &bytes[HEADER.len()..HEADER_LEN - 1];
    let lower = hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let parsed = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok());
    let Some(want) = parsed.filter(|_| lower) else {
        return Content::Damaged("its checksum header is damaged".into());
    };
    let body = &bytes[HEADER_LEN..];
    let got = crc32c::crc32c(body);
    if got != want {
        return Content::Damaged(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ));
    }
    Content::Checked(body.to_vec())
}

/// `body` with its checksum header, for a caller that writes the file itself.
pub(crate) fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(HEADER);
    out.extend_from_slice(format!("{:08x}\n", crc32c::crc32c(body)).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes `body` to `path` with its checksum header, atomically and durably.
pub(crate) fn write(fs: &dyn FileSystem, path: &Path, body: &[u8]) -> Result<()> {
    write_atomically(fs, path, &encode(body))
}

/// Writes `path` atomically and durably: a temporary file beside it, fsynced, renamed over it,
/// and the directory fsynced.
pub(crate) fn write_atomically(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_beside(path);
    put(fs, &tmp, bytes, true)?;
    fs.rename(&tmp, path).map_err(|e| err(path, "rename", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs.sync_dir(dir).map_err(|e| err(dir, "fsync", e))
}

/// Replaces `path` by `bytes` through a temporary file and a rename, without any fsync: for a
/// hint that may be stale or missing after a crash, but must never be half-written.
pub(crate) fn write_hint(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_beside(path);
    put(fs, &tmp, bytes, false)?;
    fs.rename(&tmp, path).map_err(|e| err(path, "rename", e))
}

/// The whole name plus ".tmp": files beside one partition directory (`0.leader-epochs`,
/// `0.unsynced`) would otherwise share `0.tmp`, and two writers at once could each rename the
/// other's content into place.
fn tmp_beside(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes `path` hold exactly `bytes` (fsynced if `sync`).
fn put(fs: &dyn FileSystem, path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let f = fs.open(path, true).map_err(|e| err(path, "create", e))?;
    f.set_len(0).map_err(|e| err(path, "truncate", e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| err(path, "write", e))?;
    if sync {
        f.sync_data().map_err(|e| err(path, "fsync", e))?;
    }
    Ok(())
}

fn err(path: &Path, op: &str, e: std::io::Error) -> BrokerError {
    BrokerError::Metadata(format!("{op} {}: {e}", path.display()))
}

/// Reads a checksummed JSON metadata file (the Raft vote or snapshot): the value and the body
/// it was decoded from, or `None` if there is no file. Damage, or an old-format file that does
/// not parse, is an `InvalidData` error naming the file and pointing at the repair.
pub(crate) fn read_metadata_json<T: serde::de::DeserializeOwned>(
    fs: &dyn FileSystem,
    path: &Path,
) -> std::io::Result<Option<(T, Vec<u8>)>> {
    let damaged = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is damaged: {why}; see \"A damaged metadata journal\" in docs/operations.md",
                path.display()
            ),
        )
    };
    let body = read(fs, path)?
        .body_if(|b| serde_json::from_slice::<T>(b).is_ok())
        .map_err(damaged)?;
    body.map(|b| {
        let v = serde_json::from_slice(&b).map_err(|e| damaged(e.to_string()))?;
        Ok((v, b))
    })
    .transpose()
}

/// A legacy file that must hold one decimal number, and nothing else but whitespace.
pub(crate) fn is_number(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| s.trim().parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_log::fs::StdFs;

    #[test]
    fn a_body_reads_back_and_every_flipped_bit_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote.json");
        let body = br#"{"term":5,"node_id":2,"committed":true}"#;
        write(&StdFs, &path, body).unwrap();
        assert_eq!(
            read(&StdFs, &path).unwrap(),
            Content::Checked(body.to_vec())
        );
        let good = std::fs::read(&path).unwrap();
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                match decode(bad.clone()) {
                    Content::Damaged(_) => {}
                    // A flip inside the header's fixed text makes it look old-format; the
                    // header line is then part of the body, which no reader accepts.
                    Content::Legacy(b) if byte < HEADER.len() => {
                        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_err());
                        assert!(!is_number(&b));
                    }
                    other => panic!("bit {bit} of byte {byte}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn old_files_are_returned_as_legacy_and_missing_ones_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.hw");
        assert_eq!(read(&StdFs, &path).unwrap(), Content::Missing);
        std::fs::write(&path, "1234").unwrap();
        let c = read(&StdFs, &path).unwrap();
        assert_eq!(c, Content::Legacy(b"1234".to_vec()));
        assert_eq!(c.body_if(is_number), Ok(Some(b"1234".to_vec())));
        std::fs::write(&path, "12x4").unwrap();
        assert!(read(&StdFs, &path).unwrap().body_if(is_number).is_err());
    }
}
