//! A full data disk as a client sees it: the server's data directory is a
//! small tmpfs (mounted here, removed at the end; needs root) filled to
//! ENOSPC. kubectl gets upstream's answer for an etcd out of space, naming
//! the cause; reads go on; once files are removed, writes resume with no
//! restart and every acknowledged object is there.

mod common;

use std::io::Write as _;
use std::path::Path;

use common::Server;
use nix::mount::MsFlags;

fn configmap(i: usize) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i:04}}}\ndata: {{v: \"{}\"}}\n", "x".repeat(2048))
}

/// Fills the filesystem of `dir` with one file until ENOSPC.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write(&chunk).is_ok_and(|n| n > 0) {}
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    path
}

#[test]
fn a_full_data_disk_is_upstreams_500_and_writes_resume_when_space_returns() {
    let Some(kubectl) = common::kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), MsFlags::empty(), Some("size=16m"))
        .unwrap_or_else(|e| panic!("mount a tmpfs on {} (the test needs root): {e}", dir.path().display()));
    let mount = dir.path().to_path_buf();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let s = Server::start_in(dir, kubectl);
        let mut acked = Vec::new();
        for i in 0..5 {
            s.apply(&configmap(i), &[]);
            acked.push(i);
        }
        let filler = fill(s.dir.path());
        let mut refused = None;
        for i in 5..2000 {
            // The manifest lives off the full disk.
            let manifest = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(manifest.path(), configmap(i)).unwrap();
            let out = s.run(&["create", "-f", manifest.path().to_str().unwrap()]);
            if out.status.success() {
                acked.push(i);
            } else {
                refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
                break;
            }
        }
        let refused = refused.expect("a full disk refuses writes");
        let db = s.dir.path().join("state.db");
        // As kubectl prints upstream's 500 with no reason: "Error from server: …".
        assert!(refused.starts_with("Error from server: error when creating"), "{refused}");
        assert!(refused.contains(": etcdserver: mvcc: database space exceeded: "), "{refused}");
        assert!(refused.contains(&format!("{}: no space left on device", db.display())), "{refused}");
        // Reads go on.
        let listed = s.ok(&["get", "configmaps", "-o", "name"]);
        for i in &acked {
            assert!(listed.contains(&format!("configmap/c{i:04}")), "c{i:04} acknowledged, not listed");
        }
        std::fs::remove_file(&filler).unwrap();
        let manifest = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(manifest.path(), configmap(9999)).unwrap();
        s.ok(&["create", "-f", manifest.path().to_str().unwrap()]);
        let listed = s.ok(&["get", "configmaps", "-o", "name"]);
        for i in acked.iter().chain([&9999]) {
            assert!(listed.contains(&format!("configmap/c{i:04}")), "c{i:04} missing after space returned");
        }
    }));
    // The server (killed when dropped above) is gone: the tmpfs can go.
    nix::mount::umount(&mount).unwrap();
    let _ = std::fs::remove_dir(&mount);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
