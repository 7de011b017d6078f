//! Storage engine benchmark (not a test): append throughput against the raw write speed of the
//! same disk measured in the same run, and read-by-offset latency as the log grows.
//!
//! ```text
//! cargo bench -p cascade-log --bench log_bench -- [--mib N] [--seconds S] [--read-events N]
//! ```
//!
//! Runs in `$CASCADE_BENCH_DIR` (default `target/bench-tmp`), so it measures the disk the
//! project lives on. Prints a Markdown table per part.

use cascade_log::record::{BatchBuilder, Record};
use cascade_log::{FlushPolicy, Log, LogConfig};
use hdrhistogram::Histogram;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Opts {
    /// Only append cases whose "SIZExBATCH" label contains this.
    only: Option<String>,
    mib: u64,
    seconds: f64,
    read_events: Vec<u64>,
    dir: PathBuf,
}

fn opts() -> Opts {
    let mut o = Opts {
        only: None,
        mib: 512,
        seconds: 8.0,
        read_events: vec![1_000_000, 10_000_000],
        dir: std::env::var_os("CASCADE_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench-tmp")),
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--mib" => o.mib = v.parse().expect("--mib N"),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--only" => o.only = Some(v),
            "--read-events" => {
                o.read_events = v.split(',').map(|s| s.parse().expect("numbers")).collect()
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// Raw sequential writes of `chunk` bytes: (MB/s, bytes written).
fn raw_write(path: &Path, chunk: usize, limit: u64, budget: Duration, sync_each: bool) -> f64 {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("open raw file");
    let buf = vec![0x5au8; chunk];
    let start = Instant::now();
    let mut written = 0u64;
    while written < limit && start.elapsed() < budget {
        f.write_all(&buf).expect("write");
        if sync_each {
            f.sync_data().expect("fdatasync");
        }
        written += chunk as u64;
    }
    // Buffered: include the final flush to disk, as a `dd conv=fdatasync` would.
    f.sync_data().expect("fdatasync");
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    written as f64 / secs / 1e6
}

fn batch(records: usize, size: usize) -> Vec<u8> {
    let value = vec![0xabu8; size];
    let mut b = BatchBuilder::with_capacity(records * (size + 8) + 64);
    for _ in 0..records {
        b.push(Record {
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(&value),
            headers: &[],
        });
    }
    b.finish()
}

struct AppendResult {
    msgs_per_sec: f64,
    mb_per_sec: f64,
}

fn append(
    dir: &Path,
    size: usize,
    records: usize,
    flush: FlushPolicy,
    limit: u64,
    budget: Duration,
) -> AppendResult {
    let path = fresh(dir, "append");
    let mut log = Log::open(
        &path,
        LogConfig {
            flush,
            ..LogConfig::default()
        },
    )
    .expect("open log");
    let template = batch(records, size);
    let mut buf = template.clone();
    let start = Instant::now();
    let (mut bytes, mut msgs) = (0u64, 0u64);
    while bytes < limit && start.elapsed() < budget {
        buf.copy_from_slice(&template);
        log.append(&mut buf).expect("append");
        log.flush_if_due().expect("flush");
        bytes += buf.len() as u64;
        msgs += records as u64;
    }
    log.sync().expect("final sync");
    let secs = start.elapsed().as_secs_f64();
    drop(log);
    let _ = std::fs::remove_dir_all(&path);
    AppendResult {
        msgs_per_sec: msgs as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let o = opts();
    std::fs::create_dir_all(&o.dir).expect("bench dir");
    let budget = Duration::from_secs_f64(o.seconds);
    let limit = o.mib << 20;
    println!("# cascade-log benchmark");
    println!();
    println!(
        "dir: {}  volume per case: up to {} MiB or {} s",
        o.dir.display(),
        o.mib,
        o.seconds
    );
    println!();

    // Raw disk, same run. The virtual disk's speed drifts with write-back state, so every
    // append case is compared with a raw write measured right before it: buffered 1 MiB
    // writes for flush=never, fdatasync after every write of one batch's size for always.
    let raw_path = o.dir.join("raw.bin");
    println!(
        "| event | batch | flush | msgs/s | MB/s | raw MB/s (same chunk/flush, measured just before) | vs raw |"
    );
    println!("|---|---|---|---|---|---|---|");
    for size in [100usize, 1024] {
        for records in [1usize, 100, 1000] {
            if o.only
                .as_ref()
                .is_some_and(|f| !format!("{size}x{records}").contains(f.as_str()))
            {
                continue;
            }
            for (flush, name) in [
                (FlushPolicy::Never, "never"),
                (FlushPolicy::Always, "always"),
            ] {
                let chunk = batch(records, size).len();
                let (raw, what) = match flush {
                    FlushPolicy::Always => (
                        raw_write(&raw_path, chunk, limit, budget, true),
                        format!("fdatasync'd {chunk} B writes"),
                    ),
                    _ => (
                        raw_write(&raw_path, 1 << 20, limit, budget, false),
                        "buffered 1 MiB writes".to_string(),
                    ),
                };
                let r = append(&o.dir, size, records, flush, limit, budget);
                println!(
                    "| {size} B | {records} | {name} | {:.0} | {:.1} | {raw:.0} ({what}) | {:.0}% |",
                    r.msgs_per_sec,
                    r.mb_per_sec,
                    r.mb_per_sec / raw * 100.0
                );
            }
        }
    }
    println!();

    // Read by offset as the log grows.
    println!(
        "Read by offset: 100 B events in batches of 10; each read returns the batch holding the offset."
    );
    println!();
    println!(
        "| events in log | segments | random read-by-offset p50 | p99 | p999 | open after clean close | open after crash |"
    );
    println!("|---|---|---|---|---|---|---|");
    let path = fresh(&o.dir, "reads");
    let mut log = Log::open(
        &path,
        LogConfig {
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        },
    )
    .expect("open log");
    // Batches of 10 events of 100 B: a read returns one ~1 KiB batch, so the figure is the
    // lookup plus one small read, not a large copy.
    let template = batch(10, 100);
    let mut buf = template.clone();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &target in &o.read_events {
        while log.end_offset() < target {
            buf.copy_from_slice(&template);
            log.append(&mut buf).expect("append");
        }
        let reader = log.reader();
        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram");
        let end = log.end_offset();
        // Warm the page cache as a running broker would have it, then measure.
        for _ in 0..10_000 {
            let _ = reader.read(rng.next() % end, 1).expect("read");
        }
        for _ in 0..200_000 {
            let off = rng.next() % end;
            let t = Instant::now();
            let f = reader.read(off, 1).expect("read");
            h.record(t.elapsed().as_nanos().max(1) as u64).ok();
            assert!(!f.data.is_empty());
        }
        let segments = log.segment_count();
        // Reopen after a clean close (marker trusted: no rescan), then after a crash (drop
        // without close: the active segment is rescanned and its indexes rebuilt).
        let config = log.config().clone();
        log.close().expect("close");
        let t = Instant::now();
        let reopened = Log::open(&path, config.clone()).expect("clean open");
        let clean_open = t.elapsed();
        drop(reopened);
        let t = Instant::now();
        log = Log::open(&path, config).expect("unclean open");
        let unclean_open = t.elapsed();
        println!(
            "| {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} ms | {:.0} ms |",
            end,
            segments,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            clean_open.as_secs_f64() * 1000.0,
            unclean_open.as_secs_f64() * 1000.0,
        );
    }
    drop(log);
    let _ = std::fs::remove_dir_all(&path);
}
