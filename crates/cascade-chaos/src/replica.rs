//! Reading a replica's partition log offline, from a stopped node's data directory, into the
//! checker's [`ReplicaLog`].
//!
//! The log is never opened in place: its files are copied to a scratch directory first,
//! because opening runs recovery (which may truncate a torn tail and rebuild indexes) and the
//! evidence on disk must stay as the node left it. What is read is what the node itself would
//! see on its next start. Damage `cascade_log` refuses to open is returned as an error, which
//! the checker reports as a violation.

use crate::checker::{ReplicaLog, StoredBatch, StoredRecord};
use anyhow::{Context, Result, bail};
use cascade_log::record::Batches;
use cascade_log::{Log, LogConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes asked for per read; a read returns at least one whole batch anyway.
const READ_BYTES: usize = 4 << 20;

/// Reads the partition log in `dir`, working on a copy made under `scratch`.
pub fn read_replica(dir: &Path, scratch: &Path) -> Result<ReplicaLog> {
    let copy = tempfile::Builder::new()
        .prefix("replica-")
        .tempdir_in(scratch)
        .context("making a scratch directory")?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    let log = Log::open(copy.path(), LogConfig::default())
        .map_err(|e| anyhow::anyhow!("opening the log: {e}"))?;
    let reader = log.reader();
    let mut out = ReplicaLog {
        start_offset: reader.start_offset(),
        end_offset: reader.end_offset(),
        ..Default::default()
    };
    let mut offset = out.start_offset;
    while offset < out.end_offset {
        let f = reader
            .read(offset, READ_BYTES)
            .map_err(|e| anyhow::anyhow!("reading offset {offset}: {e}"))?;
        if f.next_offset <= offset {
            bail!("read at offset {offset} made no progress");
        }
        for b in Batches::new(&f.data) {
            let b = b.map_err(|e| anyhow::anyhow!("decoding a batch near {offset}: {e}"))?;
            let h = b.header();
            out.batches.push(StoredBatch {
                base_offset: h.base_offset as u64,
                next_offset: h.next_offset() as u64,
                leader_epoch: h.leader_epoch,
                bytes: b.bytes().to_vec(),
            });
            for r in b
                .records()
                .map_err(|e| anyhow::anyhow!("decoding records at {}: {e}", h.base_offset))?
            {
                let rec: StoredRecord = (r.offset as u64, r.value.map(<[u8]>::to_vec));
                out.records.push(rec);
            }
        }
        offset = f.next_offset;
    }
    drop(reader);
    log.close()
        .map_err(|e| anyhow::anyhow!("closing the copy: {e}"))?;
    Ok(out)
}

/// The partition directories under a node's data directory: `(topic, partition) → dir`, from
/// `<data>/topics/<topic>/<partition>/`. Names starting with `.` (topics being deleted) and
/// anything that is not a partition number are skipped.
pub fn partition_dirs(data_dir: &Path) -> Result<BTreeMap<(String, u32), PathBuf>> {
    let mut out = BTreeMap::new();
    let topics = data_dir.join("topics");
    if !topics.exists() {
        return Ok(out);
    }
    for t in std::fs::read_dir(&topics).with_context(|| format!("listing {}", topics.display()))? {
        let t = t?;
        let name = t.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !t.file_type()?.is_dir() {
            continue;
        }
        for p in std::fs::read_dir(t.path())? {
            let p = p?;
            if let Ok(n) = p.file_name().to_string_lossy().parse::<u32>()
                && p.file_type()?.is_dir()
            {
                out.insert((name.clone(), n), p.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_log::record::{BatchBuilder, Record, header::set_leader_epoch};

    fn batch(values: &[&str], epoch: i32) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for v in values {
            b.push(Record {
                timestamp: 5,
                key: None,
                value: Some(v.as_bytes()),
                headers: &[],
            });
        }
        let mut bytes = b.finish();
        set_leader_epoch(&mut bytes, epoch);
        bytes
    }

    #[test]
    fn reads_batches_epochs_and_records_without_touching_the_original() {
        let data = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let dir = data.path().join("topics/chaos/3");
        let mut log = Log::open(&dir, LogConfig::default()).unwrap();
        log.append(&mut batch(&["a", "b"], 4)).unwrap();
        log.append(&mut batch(&["c"], 7)).unwrap();
        log.sync().unwrap();
        // Left open, as a killed node leaves it: no clean-shutdown marker.
        let before: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();

        let r = read_replica(&dir, scratch.path()).unwrap();
        assert_eq!((r.start_offset, r.end_offset), (0, 3));
        let summary: Vec<_> = r
            .batches
            .iter()
            .map(|b| (b.base_offset, b.next_offset, b.leader_epoch))
            .collect();
        assert_eq!(summary, vec![(0, 2, 4), (2, 3, 7)]);
        assert_eq!(
            r.records,
            vec![
                (0, Some(b"a".to_vec())),
                (1, Some(b"b".to_vec())),
                (2, Some(b"c".to_vec()))
            ]
        );
        // The stored bytes carry the base offsets the log assigned.
        assert_eq!(&r.batches[1].bytes[0..8], &2i64.to_be_bytes());

        let after: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after);
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
        drop(log);

        let dirs = partition_dirs(data.path()).unwrap();
        assert_eq!(
            dirs.keys().cloned().collect::<Vec<_>>(),
            vec![("chaos".to_string(), 3)]
        );
    }

    #[test]
    fn a_damaged_sealed_segment_is_an_error_not_data() {
        let data = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let dir = data.path().join("p");
        let cfg = LogConfig {
            segment_bytes: 200,
            ..LogConfig::default()
        };
        let mut log = Log::open(&dir, cfg).unwrap();
        for i in 0..6 {
            log.append(&mut batch(&[&format!("value-{i:040}")], 1))
                .unwrap();
        }
        log.close().unwrap();
        let first = dir.join("00000000000000000000.log");
        let mut bytes = std::fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff; // inside the sealed segment's last record
        std::fs::write(&first, bytes).unwrap();
        assert!(read_replica(&dir, scratch.path()).is_err());
    }
}
