//! The store on a three-member etcd cluster on loopback, with members
//! killed by SIGKILL: acknowledged writes survive, watches see every event
//! in order, a lost quorum is `Unavailable` and the store recovers by
//! itself when a member returns.
//! `cargo test -p orchestrator-store-etcd --test cluster`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use orchestrator_store::{EventKind, Store, StoreError};
use orchestrator_store_etcd::local::{self, LocalCluster};
use orchestrator_store_etcd::{EtcdConfig, EtcdStore};

fn cluster() -> Option<(LocalCluster, EtcdStore)> {
    if !local::available() {
        return None;
    }
    let c = LocalCluster::start(3).unwrap();
    let s = EtcdStore::connect(&EtcdConfig::from_url(&c.url(), None).unwrap()).unwrap();
    Some((c, s))
}

/// A writer creates 1,000 keys while one of the three members is killed
/// with SIGKILL a third of the way in; every acknowledged create is there
/// afterwards, and a watch opened before the first write saw every create
/// once, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_loses_no_acknowledged_write() {
    let Some((mut c, s)) = cluster() else { return };
    let s = std::sync::Arc::new(s);
    let from = s.current_revision().unwrap();
    let mut watch = s.watch("/w/", from).unwrap();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut acked = BTreeSet::new();
            for i in 0..1000 {
                let key = format!("/w/{i:04}");
                // A write refused while the cluster elects a leader is
                // retried; one that timed out may or may not have landed.
                for _ in 0..20 {
                    match s.create(&key, b"v") {
                        Ok(rev) => {
                            acked.insert((key.clone(), rev));
                            break;
                        }
                        Err(StoreError::AlreadyExists { .. }) => break,
                        Err(StoreError::Unavailable { .. }) => std::thread::sleep(Duration::from_millis(100)),
                        Err(e) => panic!("create {key}: {e}"),
                    }
                }
            }
            acked
        })
    };
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut killed = false;
    while seen.len() < 1000 {
        let e = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .unwrap_or_else(|_| panic!("no event for 60 s after {} events", seen.len()))
            .unwrap();
        assert_eq!(e.kind, EventKind::Put);
        seen.push((e.kv.key, e.kv.mod_revision));
        if seen.len() == 300 && !killed {
            // The member the first endpoint names: the client and the watch
            // may well be using it.
            c.kill(0);
            killed = true;
        }
        if writer.is_finished() && seen.len() >= s.list("/w/", None, 0, None).unwrap().items.len() {
            break;
        }
    }
    let acked = writer.join().unwrap();
    assert!(killed);
    assert!(acked.len() >= 990, "only {} of 1,000 writes acknowledged", acked.len());
    let stored: BTreeSet<(String, i64)> =
        s.list("/w/", None, 0, None).unwrap().items.into_iter().map(|kv| (kv.key, kv.mod_revision)).collect();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged {a:?} is not stored");
    }
    assert!(seen.windows(2).all(|p| p[0].1 < p[1].1), "events out of order");
    let seen_set: BTreeSet<(String, i64)> = seen.into_iter().collect();
    assert_eq!(seen_set, stored, "the watch saw exactly the stored creates");
}

/// Two of three members down: requests are `Unavailable` naming the
/// endpoints and why, and no read answers from the minority; one member
/// back, the same store works again without being reopened.
#[test]
fn a_lost_quorum_is_unavailable_and_recovers_by_itself() {
    let Some((mut c, s)) = cluster() else { return };
    let rev = s.create("/q/before", b"1").unwrap();
    c.kill(1);
    c.kill(2);
    let asked = Instant::now();
    let err = s.create("/q/during", b"2").unwrap_err();
    // Not a hang: the request's own deadline, and a moment to ask the members why.
    assert!(asked.elapsed() < 2 * orchestrator_store_etcd::DEFAULT_TIMEOUT, "answered after {:?}", asked.elapsed());
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    eprintln!("quorum lost: answered in {:?}: {message}", asked.elapsed());
    assert!(message.contains(&c.endpoints()[0]) && message.contains("unavailable"), "{message}");
    assert!(message.contains("no quorum: ") && message.contains("2 needed"), "{message}");
    let asked = Instant::now();
    let read = s.get("/q/before");
    assert!(matches!(read, Err(StoreError::Unavailable { .. })), "no stale read without quorum: {read:?}");
    assert!(asked.elapsed() < 2 * orchestrator_store_etcd::DEFAULT_TIMEOUT, "answered after {:?}", asked.elapsed());
    assert!(read.unwrap_err().to_string().contains("no quorum: "));
    c.restart(1).unwrap();
    let start = Instant::now();
    let after = loop {
        match s.create("/q/after", b"3") {
            Ok(r) => break r,
            Err(StoreError::Unavailable { .. }) if start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    assert!(after > rev);
    assert_eq!(s.get("/q/before").unwrap().unwrap().mod_revision, rev);
    // The write that timed out during the outage may have landed since (it
    // was proposed before the leader knew it had lost its quorum): what one
    // read says, the next says too.
    let during = s.get("/q/during").unwrap().map(|kv| kv.mod_revision);
    assert_eq!(s.get("/q/during").unwrap().map(|kv| kv.mod_revision), during);
}

/// Writes from one writer for `window`: how many were acknowledged, the
/// longest a single write waited, and the writes that failed. Only
/// `Unavailable` may fail (a write whose member died under it: it may or
/// may not have been applied, and the store does not send it again).
fn write_for(s: &EtcdStore, tag: &str, window: Duration) -> (usize, Duration, Vec<String>) {
    let (start, mut n, mut longest, mut failed) = (Instant::now(), 0, Duration::ZERO, Vec::new());
    while start.elapsed() < window {
        let key = format!("/f/{tag}-{n:06}");
        let w = Instant::now();
        match s.create(&key, b"v") {
            Ok(_) => {}
            Err(e @ StoreError::Unavailable { .. }) => failed.push(format!("{key}: {e}")),
            Err(e) => panic!("create {key}, {:?} into the window: {e}", start.elapsed()),
        }
        longest = longest.max(w.elapsed());
        n += 1;
    }
    (n - failed.len(), longest, failed)
}

/// A follower killed with SIGKILL under a writer, the member whose
/// endpoint the store names first (and so uses): no write fails but the
/// one under way at the kill (`Unavailable`), none waits for the client's
/// own deadline, the writer goes on at no less
/// than half its rate before the kill, and after the first request that
/// found it dead none is sent there; restarted, it is used again.
#[test]
fn a_dead_follower_is_left_at_once_and_used_again_when_back() {
    use orchestrator_store_etcd::admin;
    if !local::available() {
        return;
    }
    let mut c = LocalCluster::start(3).unwrap();
    let leader = admin::leader(&EtcdConfig::from_url(&c.url(), None).unwrap()).unwrap().expect("a leader");
    let follower = (0..3).find(|i| format!("m{i}") != leader).unwrap();
    let mut eps = c.endpoints();
    eps.swap(0, follower);
    let s = EtcdStore::connect(&EtcdConfig::from_url(&format!("etcd://{}", eps.join(",")), None).unwrap()).unwrap();
    let sent_to_follower = || s.requests_sent()[0].1;
    let window = Duration::from_secs(3);
    let (before, _, failed) = write_for(&s, "before", window);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(sent_to_follower() >= before as u64, "the store did not use its first endpoint: {:?}", s.requests_sent());
    c.kill(follower);
    let sent = sent_to_follower();
    let (after, longest, failed) = write_for(&s, "after", window);
    eprintln!("m{follower} killed: {before} writes in {window:?} before, {after} after; longest write {longest:?}");
    // At most the one write under way when the member died.
    assert!(failed.len() <= 1, "{failed:#?}");
    assert!(longest < orchestrator_store_etcd::DEFAULT_TIMEOUT, "a write waited {longest:?}");
    assert!(after * 2 >= before, "{before} writes in {window:?} before the kill, {after} after");
    assert!(sent_to_follower() <= sent + 1, "requests went on to the dead member: {:?}", s.requests_sent());

    c.restart(follower).unwrap();
    let (back, sent) = (Instant::now(), sent_to_follower());
    for round in 0.. {
        if sent_to_follower() >= sent + 10 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "m{follower} is back but unused: {:?}", s.requests_sent());
        write_for(&s, &format!("back{round}"), Duration::from_millis(100));
    }
}

/// Unmounts the tmpfs standing in for a member's small data disk.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=700"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount a tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with `name` until a write is
/// refused (ENOSPC); returns the file.
fn fill(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => return path,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
}

/// One member's data disk fills up (a tmpfs filled to ENOSPC): that member
/// stops, saying so in its log, the other two go on and every write is
/// acknowledged; with space back and the member started again, it serves
/// every acknowledged write on its own.
#[test]
fn a_member_whose_disk_fills_stops_alone_and_catches_up_when_space_returns() {
    if !local::available() {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI: mounting a tmpfs needs root");
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // etcd preallocates 64 MiB WAL segments, the one in use and the next:
    // room for both, then filled to the last byte once it is serving.
    let disk = Tmpfs::mount(&dir.path().join("m2"), "200m");
    let mut c = LocalCluster::start_in(dir.path(), 3).unwrap();
    let full = fill(&disk.0, "filler");
    let s = EtcdStore::connect(&EtcdConfig::from_url(&c.url(), None).unwrap()).unwrap();
    let value = vec![b'x'; 16 << 10];
    let mut acked = Vec::new();
    for i in 0..400 {
        let key = format!("/full/{i:04}");
        for _ in 0..50 {
            match s.create(&key, &value) {
                Ok(rev) => {
                    acked.push((key.clone(), rev));
                    break;
                }
                // A write under way when the member stopped may have landed.
                Err(StoreError::AlreadyExists { .. }) => break,
                Err(StoreError::Unavailable { .. }) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("create {key}: {e}"),
            }
        }
    }
    assert!(acked.len() >= 399, "only {} of 400 writes acknowledged", acked.len());
    let log = std::fs::read_to_string(dir.path().join("m2.log")).unwrap();
    assert!(log.contains("no space left on device"), "m2's log does not say its disk is full:\n{log}");
    let m2_endpoint = format!("etcd://{}", c.endpoints()[2]);
    let alone = || EtcdStore::connect(&EtcdConfig::from_url(&m2_endpoint, None).unwrap());
    assert!(alone().and_then(|m2| m2.get("/full/0399")).is_err(), "m2 still answers on a full disk");

    std::fs::remove_file(&full).unwrap();
    c.kill(2);
    c.restart(2).unwrap();
    let start = Instant::now();
    let m2 = loop {
        match alone() {
            Ok(m2) => break m2,
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("m2 back on its disk does not answer: {e}"),
        }
    };
    for (key, rev) in &acked {
        loop {
            match m2.get(key) {
                Ok(Some(kv)) => {
                    assert_eq!(kv.mod_revision, *rev, "{key}");
                    break;
                }
                r if start.elapsed() < Duration::from_secs(60) => {
                    let _ = r;
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => panic!("m2 back on its disk does not serve {key}: {r:?}"),
            }
        }
    }
}
