//! Backup and restore through the `orchestrator` binary, as an operator
//! (or init) runs them: a backup of a serving store, the data wiped,
//! restored, every object back; a damaged database found at start is
//! reported naming the file and the last automatic snapshot, the server
//! waits instead of exiting, and the snapshot brings the objects back.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;

fn orchestrator(args: &[&str], dir: &Path) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    c.arg(args[0]).arg("--data-dir").arg(dir).args(&args[1..]);
    c.output().unwrap()
}

fn configmaps(n: usize) -> String {
    (0..n)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i:02}}}\ndata: {{v: \"value {i}\"}}\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn names_and_values(s: &Server) -> String {
    s.ok(&["get", "configmaps", "-o", r#"jsonpath={range .items[?(@.data.v)]}{.metadata.name}={.data.v};{end}"#])
}

/// Stops the server and hands back its data directory.
fn stop(mut s: Server) -> (tempfile::TempDir, std::path::PathBuf) {
    let _ = s.child.kill();
    let _ = s.child.wait();
    let kubectl = s.kubectl.clone();
    (std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap()), kubectl)
}

#[test]
fn backup_wipe_restore_gives_back_every_object() {
    let Some(s) = Server::start() else { return };
    s.apply(&configmaps(20), &[]);
    let want = names_and_values(&s);
    assert_eq!(want.matches(';').count(), 20, "{want}");
    let file = tempfile::NamedTempFile::new().unwrap();
    // Taken while the server serves.
    let out = orchestrator(&["backup", "--out", file.path().to_str().unwrap()], s.dir.path());
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    let (dir, kubectl) = stop(s);
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    // Another cluster's node refuses it, naming the file.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("ca.crt"), "another CA").unwrap();
    let out = orchestrator(&["restore", file.path().to_str().unwrap()], other.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is a backup of another cluster"), "{err}");
    let out = orchestrator(&["restore", file.path().to_str().unwrap()], dir.path());
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let s = Server::start_in(dir, kubectl);
    assert_eq!(names_and_values(&s), want);
}

#[test]
fn a_corrupt_database_is_reported_with_the_last_snapshot_and_the_server_waits() {
    let Some(s) = Server::start() else { return };
    s.apply(&configmaps(5), &[]);
    let want = names_and_values(&s);
    // Without a snapshot, the first housekeeping pass at start takes one:
    // restart with none, so that it holds the ConfigMaps.
    let (dir, kubectl) = stop(s);
    let snapshots = dir.path().join("snapshots");
    let _ = std::fs::remove_dir_all(&snapshots);
    let s = Server::start_in(dir, kubectl);
    let start = Instant::now();
    let snapshot = loop {
        let found = std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "db"));
        if let Some(p) = found {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no automatic snapshot under {}", snapshots.display());
        std::thread::sleep(Duration::from_millis(200));
    };
    let (dir, kubectl) = stop(s);
    let db = dir.path().join("state.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..100].fill(0x5a);
    std::fs::write(&db, &bytes).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["server", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("is corrupt") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the server said nothing of the damage");
    }
    assert!(line.contains(&format!("{} is corrupt", db.display())), "{line}");
    assert!(
        line.contains(&format!("orchestrator restore --data-dir {} {}", dir.path().display(), snapshot.display())),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server exited (a supervisor would restart it into the same damage)"
    );
    let _ = child.kill();
    let _ = child.wait();
    let out = orchestrator(&["restore", snapshot.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("was kept as"), "the damaged file is kept aside");
    let s = Server::start_in(dir, kubectl);
    assert_eq!(names_and_values(&s), want);
}
