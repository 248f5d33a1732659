//! Benchmark (not a test): the SQLite store. Prints creates/s and
//! updates/s (durable: synchronous=FULL, and NORMAL), list latency at 10,000
//! objects of ~1 KiB, and watch event latency with 1,000 watchers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_store::{Durability, SqliteStore, Store};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let value = vec![b'x'; 1024];
    for (name, durability) in [("synchronous=FULL", Durability::Full), ("synchronous=NORMAL", Durability::Normal)] {
        let s = SqliteStore::open(&dir.path().join(format!("{name}.db")), durability).expect("open");
        let n = 2000;
        let t = Instant::now();
        let revs: Vec<i64> = (0..n).map(|i| s.create(&format!("/pods/ns/p{i:05}"), &value).expect("create")).collect();
        let creates = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (i, r) in revs.iter().enumerate() {
            s.update(&format!("/pods/ns/p{i:05}"), &value, *r).expect("update");
        }
        let updates = n as f64 / t.elapsed().as_secs_f64();
        println!("{name}: {creates:.0} creates/s, {updates:.0} updates/s (1 KiB values)");
    }

    let s = Arc::new(SqliteStore::open(&dir.path().join("list.db"), Durability::Normal).expect("open"));
    for i in 0..10_000 {
        s.create(&format!("/pods/ns/p{i:05}"), &value).expect("create");
    }
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let page = s.list("/pods/", None, 0, None).expect("list");
            assert_eq!(page.items.len(), 10_000);
            t.elapsed()
        })
        .collect();
    times.sort();
    println!("list of 10,000 objects: p50 {:.1} ms, max {:.1} ms", ms(times[10]), ms(times[19]));
    let t = Instant::now();
    let page = s.list("/pods/", None, 500, None).expect("list");
    println!("first page of 500 (kubectl's limit): {:.1} ms", ms(t.elapsed()));
    drop(page);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let from = s.current_revision().expect("revision");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        let sent = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<i64, Instant>::new()));
        for _ in 0..1000 {
            let mut w = s.watch("/pods/", from).expect("watch");
            let tx = tx.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                while let Ok(e) = w.next().await {
                    let at = sent.lock().unwrap().get(&e.kv.mod_revision).copied();
                    if let Some(at) = at {
                        let _ = tx.send(at.elapsed());
                    }
                }
            });
        }
        let events = 20;
        for i in 0..events {
            let key = format!("/pods/ns/p{i:05}");
            let current = s.get(&key).expect("get").expect("present").mod_revision;
            {
                // Hold the map while writing, so a watcher never looks up
                // a revision before its send time is recorded.
                let mut map = sent.lock().unwrap();
                let rev = s.update(&key, &value, current).expect("update");
                map.insert(rev, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut lat = Vec::new();
        while lat.len() < events * 1000 {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(d)) => lat.push(d),
                _ => break,
            }
        }
        lat.sort();
        println!(
            "watch latency, 1,000 watchers × {events} events ({} delivered): p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            ms(lat[lat.len() / 2]),
            ms(lat[lat.len() * 99 / 100])
        );
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
