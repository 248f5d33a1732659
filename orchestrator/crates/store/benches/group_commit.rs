//! Benchmark (not a test): durable writes (`synchronous=FULL`) from 1 and
//! 16 writers at once, each updating its own key (as kubelets renew their
//! Leases and report status). Prints writes/s, writes per transaction (the
//! writes queued behind a commit share the next one) and the bytes this
//! process had written to disk per write (`/proc/self/io`).

use std::sync::Arc;
use std::time::Instant;

use orchestrator_store::{Durability, SqliteStore, Store};

const WRITES: usize = 4000;

fn main() {
    let dir = tempfile::tempdir_in(std::env::var_os("PLINTH_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .expect("temp dir");
    let value = vec![b'x'; 1024];
    for threads in [1, 16] {
        let s =
            Arc::new(SqliteStore::open(&dir.path().join(format!("w{threads}.db")), Durability::Full).expect("open"));
        let each = WRITES / threads;
        let written = disk_write_bytes();
        let commits = s.commits();
        let t = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                let (s, value) = (s.clone(), value.clone());
                std::thread::spawn(move || {
                    let key = format!("/registry/leases/kube-node-lease/node{w:02}");
                    let mut rev = s.create(&key, &value).expect("create");
                    for _ in 1..each {
                        rev = s.update(&key, &value, rev).expect("update");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("writer");
        }
        let seconds = t.elapsed().as_secs_f64();
        let transactions = s.commits() - commits;
        let bytes = disk_write_bytes() - written;
        assert!(transactions > 0 && bytes > 0, "nothing measured: {transactions} transactions, {bytes} bytes written");
        println!(
            "{threads:>2} writer(s), 1 KiB values, synchronous=FULL: {:.0} writes/s, {:.1} writes per transaction, {:.1} KB written per write",
            WRITES as f64 / seconds,
            WRITES as f64 / transactions as f64,
            bytes as f64 / WRITES as f64 / 1000.0
        );
    }
}

/// Bytes this process has caused to be written to storage
/// (`/proc/self/io` `write_bytes`; 0 on a tmpfs, which the assertion refuses).
fn disk_write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("read /proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/self/io")
}
