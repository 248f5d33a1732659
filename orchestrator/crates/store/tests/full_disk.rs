//! The store on a full disk: a small tmpfs (mounted here, removed at the
//! end; needs root) is filled until SQLite gets ENOSPC. Writes are refused
//! with `NoSpace` naming the database, nothing acknowledged is lost, and
//! writes succeed again, with no restart, once space returns.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use orchestrator_store::{Durability, SqliteStore, Store, StoreError};

/// A tmpfs of `size` mounted on a new temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size},mode=0700");
        nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), MsFlags::empty(), Some(options.as_str()))
            .unwrap_or_else(|e| panic!("mount a tmpfs on {} (the test needs root): {e}", dir.path().display()));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount(self.dir.path()) {
            eprintln!("unmount {}: {e}", self.dir.path().display());
        }
    }
}

/// Fills the filesystem under `dir` with a file until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // Whatever part of a block is left.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    path
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_resumes_with_every_acknowledged_write() {
    let fs = Tmpfs::mount("8m");
    let db = fs.path().join("state.db");
    let s = SqliteStore::open(&db, Durability::Full).unwrap();
    let value = vec![b'v'; 4096];
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("/k/{i:05}");
        s.create(&key, &value).unwrap();
        acked.push(key);
    }
    let filler = fill(fs.path());
    // Space runs out at a page boundary: some writes may still fit.
    let mut refused = None;
    for i in 50..10_000 {
        let key = format!("/k/{i:05}");
        match s.create(&key, &value) {
            Ok(_) => acked.push(key),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a full disk refuses writes");
    assert!(
        matches!(&refused, StoreError::NoSpace { path, .. } if *path == db),
        "a full disk is NoSpace naming the database, not: {refused:?}"
    );
    assert!(refused.to_string().ends_with(&format!("{}: no space left on device", db.display())), "{refused}");
    // Still full: still refused, and reads go on.
    assert!(matches!(s.create("/k/again", &value), Err(StoreError::NoSpace { .. })));
    let first = s.get(&acked[0]).unwrap().unwrap();
    assert!(matches!(s.update(&acked[0], b"x", first.mod_revision), Err(StoreError::NoSpace { .. })));
    for key in &acked {
        assert_eq!(s.get(key).unwrap().map(|kv| kv.value), Some(value.clone()), "{key} after ENOSPC");
    }
    // Space returns: the same store writes again.
    std::fs::remove_file(&filler).unwrap();
    let rev = s.create("/k/after", b"back").unwrap();
    assert_eq!(s.update(&acked[0], b"x", first.mod_revision).unwrap(), rev + 1);
    drop(s);
    // Reopened: every acknowledged write, and the ones after, are there.
    let s = SqliteStore::open(&db, Durability::Full).unwrap();
    for key in &acked[1..] {
        assert_eq!(s.get(key).unwrap().map(|kv| kv.value), Some(value.clone()), "{key} after reopening");
    }
    assert_eq!(s.get(&acked[0]).unwrap().unwrap().value, b"x");
    assert_eq!(s.get("/k/after").unwrap().unwrap().value, b"back");
}
