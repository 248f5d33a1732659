//! Benchmark (not a test): writes on etcd against SQLite, through the same
//! `Store` calls with the same objects (1 KiB values under /registry/…).
//! For each store: 2,000 creates then 2,000 updates from one writer
//! (writes/s, p50 and p99 latency of one write), and 8 writers at once
//! (writes/s). The etcd clusters are Debian's etcd on loopback with fsync,
//! 1 and 3 members, started by the benchmark.
//! `cargo bench -p orchestrator --bench etcd`

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_store::{Durability, SqliteStore, Store};
use orchestrator_store_etcd::local::LocalCluster;
use orchestrator_store_etcd::{EtcdConfig, EtcdStore};

const N: usize = 2000;

fn main() {
    let value = vec![b'x'; 1024];
    let dir = tempfile::tempdir().expect("temp dir");
    let full = SqliteStore::open(&dir.path().join("full.db"), Durability::Full).expect("open");
    run("SQLite synchronous=FULL", Arc::new(full), &value);
    let normal = SqliteStore::open(&dir.path().join("normal.db"), Durability::Normal).expect("open");
    run("SQLite synchronous=NORMAL", Arc::new(normal), &value);
    for members in [1, 3] {
        let cluster = LocalCluster::start(members).expect("etcd (Debian's etcd-server)");
        let store = EtcdStore::connect(&EtcdConfig::from_url(&cluster.url(), None).expect("url")).expect("connect");
        run(&format!("etcd, {members} member(s)"), Arc::new(store), &value);
    }
}

fn run(name: &str, s: Arc<dyn Store>, value: &[u8]) {
    let key = |i: usize| format!("/registry/configmaps/bench/c{i:05}");
    let mut lat = Vec::with_capacity(2 * N);
    let t = Instant::now();
    let mut revs = Vec::with_capacity(N);
    for i in 0..N {
        let w = Instant::now();
        revs.push(s.create(&key(i), value).expect("create"));
        lat.push(w.elapsed());
    }
    for (i, r) in revs.iter().enumerate() {
        let w = Instant::now();
        s.update(&key(i), value, *r).expect("update");
        lat.push(w.elapsed());
    }
    let rate = (2 * N) as f64 / t.elapsed().as_secs_f64();
    lat.sort();
    let (p50, p99) = (ms(lat[lat.len() / 2]), ms(lat[lat.len() * 99 / 100]));
    let t = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (s, value) = (s.clone(), value.to_vec());
            std::thread::spawn(move || {
                for i in 0..N / 8 {
                    s.create(&format!("/registry/configmaps/bench8/w{w}-{i:05}"), &value).expect("create");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let parallel = N as f64 / t.elapsed().as_secs_f64();
    println!(
        "{name}: one writer {rate:.0} writes/s (p50 {p50:.2} ms, p99 {p99:.2} ms); 8 writers {parallel:.0} writes/s"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
