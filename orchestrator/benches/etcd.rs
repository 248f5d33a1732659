//! Benchmark (not a test): writes on etcd against SQLite, through the same
//! `Store` calls with the same objects (1 KiB values under /registry/…).
//! For each store: 2,000 creates then 2,000 updates from one writer
//! (writes/s, p50 and p99 latency of one write), and 8 writers at once
//! (writes/s). The etcd clusters are Debian's etcd on loopback with fsync,
//! 1 and 3 members, started by the benchmark.
//! Then failover on the three members: one writer writes without pause
//! while a member is killed with SIGKILL — a follower, then the leader —
//! and the time from the kill to the first write acknowledged after it is
//! printed (the writer's longest wait around the kill, etcd's election
//! included), then the member is started again and its catching up timed
//! (until it serves a read of the last write on its own).
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
        if members == 3 {
            failover(cluster, &value);
        }
    }
}

/// Kills a follower, then the leader, under a writer; prints each gap.
fn failover(mut cluster: LocalCluster, value: &[u8]) {
    use orchestrator_store_etcd::admin;
    let cfg = EtcdConfig::from_url(&cluster.url(), None).expect("url");
    let store = Arc::new(EtcdStore::connect(&cfg).expect("connect"));
    for role in ["follower", "leader"] {
        let leader = admin::leader(&cfg).expect("status").expect("a leader");
        let name = match role {
            "leader" => leader,
            _ => ["m0", "m1", "m2"].into_iter().find(|m| *m != leader).expect("a follower").to_string(),
        };
        let i: usize = name[1..].parse().expect("members are m0..m2");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, v, halt) = (store.clone(), value.to_vec(), stop.clone());
        let writer = std::thread::spawn(move || {
            // Each acknowledged write's time, and the failed ones' errors.
            // A failed write is not retried under the same key: one whose
            // answer was lost with its member may have been applied, and
            // would then be "already exists" for ever.
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("/registry/configmaps/failover/{role}-{n:06}");
                match s.create(&key, &v) {
                    Ok(_) => acked.push((Instant::now(), key)),
                    Err(e) => failed.push(e.to_string()),
                }
                n += 1;
            }
            (acked, failed)
        });
        std::thread::sleep(Duration::from_secs(2));
        let killed = Instant::now();
        cluster.kill(i);
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (acked, failed) = writer.join().expect("writer");
        let Some(first) = acked.iter().find(|(t, _)| *t > killed).map(|(t, _)| *t - killed) else {
            panic!(
                "etcd failover, {role} ({name}) killed: no write acknowledged in the 5 s after the kill, no failover \
                 to measure; {} failed: {failed:#?}",
                failed.len()
            );
        };
        for e in failed.iter().take(3) {
            println!("etcd failover, {role} ({name}) killed: a write failed: {e}");
        }
        let before = acked.iter().filter(|(t, _)| *t <= killed).count();
        let after = acked.len() - before;
        // The writer's longest wait between two acknowledged writes.
        let pause = acked.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
        let last = acked.last().map(|(_, k)| k.clone()).expect("writes");
        let back = Instant::now();
        cluster.restart(i).expect("restart");
        // Caught up: the member alone serves the last write.
        let own = EtcdConfig::from_url(&format!("etcd://{}", cluster.endpoints()[i]), None).expect("url");
        let alone = EtcdStore::connect(&own).expect("connect to the member");
        while alone.get(&last).ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "etcd failover, {role} ({name}) killed: first write acknowledged {:.0} ms after the kill, longest pause \
             {:.0} ms; {before} writes in the 2 s before, {after} in the 5 s after ({:.0} and {:.0} writes/s), {} \
             failed; restarted, caught up in {:.0} ms",
            ms(first),
            ms(pause),
            before as f64 / 2.0,
            after as f64 / 5.0,
            failed.len(),
            ms(back.elapsed())
        );
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
