//! The cluster store over the machine API: `Backup` runs `orchestrator
//! backup` (SQLite's online backup, with its header: version, cluster,
//! checksum) and streams the file; `Restore` takes a backup file (or names
//! one of the node's automatic snapshots), has `orchestrator restore
//! --check` refuse a damaged file, one of another cluster or not a backup
//! with nothing changed, then stops the orchestrator service, restores and
//! starts it again. A store the server found damaged at start is reported
//! (`store-damaged.json`, written by the server): in `Version`, and as
//! events when it appears and goes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use machinery::api;
use machinery::config;
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;
use tonic::Status;

use super::{Machine, ORCHESTRATOR, OrchestratorSettings, Stream_};
use crate::journal::Journal;
use crate::supervisor::event;

/// Chunks of a backup on the wire.
const CHUNK: usize = 1 << 20;

/// What the server leaves when its store is damaged (the orchestrator's
/// `backup::Damaged`).
#[derive(serde::Deserialize)]
struct Damaged {
    error: String,
    snapshot: Option<String>,
    snapshot_taken: Option<u64>,
}

fn marker(data_dir: &Path) -> PathBuf {
    data_dir.join("store-damaged.json")
}

/// The damaged store's report and the command that restores the last
/// snapshot; `None` while the store is well.
pub(super) fn damaged_report(data_dir: &Path) -> Option<String> {
    let raw = std::fs::read(marker(data_dir)).ok()?;
    let Ok(d) = serde_json::from_slice::<Damaged>(&raw) else {
        return Some(format!("the cluster store is damaged (see `osctl logs {ORCHESTRATOR}`)"));
    };
    Some(match (d.snapshot, d.snapshot_taken) {
        (Some(name), Some(at)) => format!(
            "the cluster store is damaged: {}. The last automatic snapshot is {name} (taken {}): restore it with \
             `osctl restore --snapshot {name}`, or restore a backup with `osctl restore FILE`",
            d.error,
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at))
        ),
        _ => format!(
            "the cluster store is damaged: {}. There is no automatic snapshot: restore a backup with `osctl restore FILE`",
            d.error
        ),
    })
}

/// Reports the damaged store as an event when the server finds it, and
/// when it is well again (a look every 2 s: a stat, nothing written).
pub(super) fn watch_damage(events: std::sync::Arc<Journal<api::Event>>, data_dir: PathBuf) {
    tokio::spawn(async move {
        let mut reported = false;
        loop {
            match (damaged_report(&data_dir), reported) {
                (Some(report), false) => {
                    event(&events, "store", report);
                    reported = true;
                }
                (None, true) => {
                    event(&events, "store", "the cluster store opens again".into());
                    reported = false;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// A snapshot's file name as the report gives it: no path.
fn snapshot_path(data_dir: &Path, name: &str) -> Result<PathBuf, Status> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Status::invalid_argument(format!(
            "{name:?} is not a snapshot's file name (e.g. state-1764000000.db)"
        )));
    }
    let dir = data_dir.join("snapshots");
    let path = dir.join(name);
    if !path.is_file() {
        let have: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        return Err(Status::not_found(format!(
            "no snapshot {name} under {} (there {})",
            dir.display(),
            if have.is_empty() { "are none".to_string() } else { format!("are: {}", have.join(", ")) }
        )));
    }
    Ok(path)
}

/// Runs `orchestrator ARGS --data-dir D`: its output, or its error as a Status.
async fn orchestrator(o: &OrchestratorSettings, args: &[&std::ffi::OsStr]) -> Result<String, Status> {
    let mut cmd = std::process::Command::new(&o.program);
    cmd.args(args).arg("--data-dir").arg(&o.data_dir);
    let out =
        crate::supervisor::output(cmd).await.map_err(|e| Status::internal(format!("{}: {e}", o.program.display())))?;
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().trim_start_matches("Error: ").to_string();
    if out.status.success() { Ok(said(&out.stdout)) } else { Err(Status::failed_precondition(said(&out.stderr))) }
}

impl Machine {
    /// The orchestrator of a control plane, or why this node has no store.
    async fn store_node(&self) -> Result<&OrchestratorSettings, Status> {
        let role = self.state.lock().await.active.as_ref().map(|a| a.config.cluster.role);
        match (&self.settings.orchestrator, role) {
            (Some(o), Some(config::Role::Controlplane)) => Ok(o),
            (_, Some(config::Role::Worker)) => Err(Status::failed_precondition(
                "this node is a worker: it holds no cluster store (its kubelet joins the control plane); back up or restore a control-plane node",
            )),
            (_, None) => Err(Status::failed_precondition(
                "this node has no config applied: apply a control-plane config first, then restore into its fresh store",
            )),
            (None, _) => Err(Status::failed_precondition("this node runs no orchestrator: it holds no cluster store")),
        }
    }

    /// A backup of the store, streamed: its size first, then its bytes.
    pub(super) async fn backup(&self) -> Result<Stream_<api::BackupChunk>, Status> {
        let o = self.store_node().await?;
        let file = o.data_dir.join(format!("backup-{}.tmp", std::process::id()));
        let written = orchestrator(o, &["backup".as_ref(), "--out".as_ref(), file.as_os_str()]).await;
        let (size, stream) = stream_file(written, &file).await?;
        event(&self.events, "store", format!("backup of the cluster store taken ({size} bytes)"));
        Ok(stream)
    }

    /// Restores the store from an uploaded backup or a snapshot on the node.
    pub(super) async fn restore(
        &self,
        mut chunks: impl tokio_stream::Stream<Item = Result<api::RestoreChunk, Status>> + Unpin,
    ) -> Result<api::RestoreResponse, Status> {
        use api::restore_chunk::Chunk;
        let o = self.store_node().await?;
        let Some(Ok(api::RestoreChunk { chunk: Some(Chunk::Options(opts)) })) = chunks.next().await else {
            return Err(Status::invalid_argument("a restore starts with its options"));
        };
        let upload = o.data_dir.join(format!("restore-{}.upload", std::process::id()));
        let from = if opts.snapshot.is_empty() {
            receive(&mut chunks, &upload, opts.size).await?;
            upload.clone()
        } else {
            snapshot_path(&o.data_dir, &opts.snapshot)?
        };
        let uploaded = opts.snapshot.is_empty();
        let result = if opts.etcd && uploaded {
            self.etcd_restore(&from).await
        } else {
            self.restore_from(o, &from, uploaded).await
        };
        let _ = std::fs::remove_file(&upload);
        // The operator knows the file by its own name, not the node's copy.
        let result = result
            .map(|mut r| {
                r.summary = r.summary.replace(&upload.display().to_string(), "the uploaded file");
                r
            })
            .map_err(|e| {
                Status::new(e.code(), e.message().replace(&upload.display().to_string(), "the uploaded file"))
            });
        match &result {
            Ok(r) => event(&self.events, "store", r.summary.clone()),
            Err(e) => event(&self.events, "store", format!("restore refused: {}", e.message())),
        }
        result
    }

    async fn restore_from(
        &self,
        o: &OrchestratorSettings,
        from: &Path,
        uploaded: bool,
    ) -> Result<api::RestoreResponse, Status> {
        // An upload must be a backup file; a snapshot is named instead.
        let args = |check: bool| {
            let mut a: Vec<&std::ffi::OsStr> = vec!["restore".as_ref()];
            a.extend(check.then_some(std::ffi::OsStr::new("--check")));
            a.extend(uploaded.then_some(std::ffi::OsStr::new("--backup")));
            a.push(from.as_os_str());
            a
        };
        // Checked while the store still serves: a bad file changes nothing.
        let what = orchestrator(o, &args(true)).await?;
        // No start of the cluster services meanwhile.
        let _one = self.cluster_starting.lock().await;
        let running = self.supervises(ORCHESTRATOR);
        if running {
            self.supervisor.stop(ORCHESTRATOR).await?;
        }
        let restored = orchestrator(o, &args(false)).await;
        if running {
            self.supervisor.resume(ORCHESTRATOR)?;
        }
        let done = restored?;
        let what = what.replacen(&format!("{}: ", from.display()), "", 1);
        let again = if running { "; the orchestrator started again" } else { "" };
        Ok(api::RestoreResponse { summary: format!("{done} — {what}{again}") })
    }
}

/// Writes an upload to `path` (0600), refusing a truncated one.
async fn receive(
    chunks: &mut (impl tokio_stream::Stream<Item = Result<api::RestoreChunk, Status>> + Unpin),
    path: &Path,
    size: u64,
) -> Result<(), Status> {
    use std::io::Write as _;
    let mut file =
        crate::store::create_private(path).map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
    let mut got = 0u64;
    while let Some(item) = chunks.next().await {
        let Some(api::restore_chunk::Chunk::Data(data)) = item?.chunk else {
            return Err(Status::invalid_argument("a restore sends its options once, first"));
        };
        got += data.len() as u64;
        file.write_all(&data).map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
    }
    if got != size {
        let _ = std::fs::remove_file(path);
        return Err(Status::failed_precondition(format!(
            "the upload ended after {got} of {size} bytes: nothing was restored"
        )));
    }
    Ok(())
}

/// Streams a file the node wrote for the caller (`written` says whether it
/// was): its size first, then its bytes. The file leaves the disk once
/// open (an open file is read on).
pub(super) async fn stream_file(
    written: Result<String, Status>,
    file: &Path,
) -> Result<(u64, Stream_<api::BackupChunk>), Status> {
    let opened = match written {
        Ok(_) => tokio::fs::File::open(file).await.map_err(|e| Status::internal(format!("{}: {e}", file.display()))),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(file);
    let mut f = opened?;
    let size = f.metadata().await.map_err(|e| Status::internal(format!("{}: {e}", file.display())))?.len();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = file.to_path_buf();
    tokio::spawn(async move {
        let chunk = |c| Ok(api::BackupChunk { chunk: Some(c) });
        if tx.send(chunk(api::backup_chunk::Chunk::Size(size))).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let item = match f.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => chunk(api::backup_chunk::Chunk::Data(buf[..n].to_vec())),
                Err(e) => Err(Status::internal(format!("reading {}: {e}", path.display()))),
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Ok((size, Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_damaged_report_names_the_snapshot_and_the_command() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::damaged_report(dir.path()), None);
        std::fs::write(
            super::marker(dir.path()),
            r#"{"error":"/d/state.db is corrupt: file is not a database","snapshot":"state-86400.db","snapshot_taken":86400}"#,
        )
        .unwrap();
        assert_eq!(
            super::damaged_report(dir.path()).unwrap(),
            "the cluster store is damaged: /d/state.db is corrupt: file is not a database. The last automatic \
             snapshot is state-86400.db (taken 1970-01-02T00:00:00Z): restore it with `osctl restore --snapshot \
             state-86400.db`, or restore a backup with `osctl restore FILE`"
        );
        std::fs::write(super::marker(dir.path()), r#"{"error":"e","snapshot":null,"snapshot_taken":null}"#).unwrap();
        assert!(
            super::damaged_report(dir.path())
                .unwrap()
                .ends_with("There is no automatic snapshot: restore a backup with `osctl restore FILE`")
        );
    }

    #[test]
    fn a_snapshot_is_named_by_its_file_name_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("snapshots")).unwrap();
        std::fs::write(dir.path().join("snapshots/state-1.db"), b"").unwrap();
        assert!(super::snapshot_path(dir.path(), "state-1.db").is_ok());
        for bad in ["../state.db", "/etc/passwd", ".hidden", ""] {
            assert_eq!(
                super::snapshot_path(dir.path(), bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
        let e = super::snapshot_path(dir.path(), "state-2.db").unwrap_err();
        assert!(e.message().contains("there are: state-1.db"), "{}", e.message());
    }
}
