//! `osctl backup` and `osctl restore`: the cluster store's backup file
//! streamed from and to a control plane, with a progress bar.

use std::io::Write as _;
use std::path::Path;

use machinery::api;
use tokio::io::AsyncReadExt as _;
use tokio_stream::StreamExt as _;

use crate::output::{self, Format};
use crate::{Failure, Global, Session, from_status};

/// Chunks of a backup file on the wire.
const CHUNK: usize = 1 << 20;

/// The one node a store command works on.
fn one_target(session: &Session, what: &str) -> Result<(String, String), Failure> {
    let mut targets = session.targets()?;
    if targets.len() != 1 {
        return Err(Failure::Usage(format!("{what} works on one node at a time: give one with -n")));
    }
    Ok(targets.remove(0))
}

/// Streams the node's backup into `out` (0600; through `out.partial`, so
/// a broken transfer leaves no file that looks whole).
pub async fn backup(global: Global, out: &Path) -> Result<(), Failure> {
    download(global, out, Download::Backup).await
}

/// Streams a consistent etcd snapshot of the node's member into `out`, as
/// [`backup`] does.
pub async fn etcd_snapshot(global: Global, out: &Path) -> Result<(), Failure> {
    download(global, out, Download::EtcdSnapshot).await
}

#[derive(Clone, Copy)]
enum Download {
    Backup,
    EtcdSnapshot,
}

async fn download(global: Global, out: &Path, what: Download) -> Result<(), Failure> {
    let fmt = global.output;
    let session = Session::open(global)?;
    let (name, doing, done) = match what {
        Download::Backup => ("backup", "backing up", "cluster store backed up"),
        Download::EtcdSnapshot => ("etcd snapshot", "taking an etcd snapshot", "etcd snapshot written"),
    };
    let (node, addr) = one_target(&session, name)?;
    let mut c = session.client(&addr).await?;
    let started = match what {
        Download::Backup => c.backup(api::BackupRequest {}).await,
        Download::EtcdSnapshot => c.etcd_snapshot(api::EtcdSnapshotRequest {}).await,
    };
    let mut stream = match started {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(session.failure(&node, &addr, s).await),
    };
    let size = match stream.next().await {
        Some(Ok(api::BackupChunk { chunk: Some(api::backup_chunk::Chunk::Size(n)) })) => n,
        Some(Err(s)) => return Err(from_status(&node, s)),
        _ => return Err(Failure::Other(format!("{node}: the {name} did not start with its size"))),
    };
    let partial = out.with_extension("partial");
    let write_err = |e: std::io::Error| Failure::Other(format!("writing {}: {e}", partial.display()));
    let mut file = crate::create_private(&partial).map_err(write_err)?;
    let bar = output::progress(size, &format!("{node}: {doing}"));
    let mut got = 0u64;
    while let Some(item) = stream.next().await {
        let data = match item {
            Ok(api::BackupChunk { chunk: Some(api::backup_chunk::Chunk::Data(d)) }) => d,
            Ok(_) => continue,
            Err(s) => {
                bar.finish_and_clear();
                let _ = std::fs::remove_file(&partial);
                return Err(from_status(&node, s));
            }
        };
        file.write_all(&data).map_err(write_err)?;
        got += data.len() as u64;
        bar.inc(data.len() as u64);
    }
    bar.finish_and_clear();
    if got != size {
        let _ = std::fs::remove_file(&partial);
        return Err(Failure::Other(format!("{node}: the {name} ended after {got} of {size} bytes: nothing written")));
    }
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&partial, out).map_err(|e| Failure::Other(format!("writing {}: {e}", out.display())))?;
    match fmt {
        Format::Json => output::json(&serde_json::json!({"node": node, "file": out, "bytes": size})),
        Format::Table => println!("{node}: {done} to {} ({size} bytes)", out.display()),
    }
    Ok(())
}

/// Sends `file` (or names a snapshot on the node) to restore the store;
/// with `etcd`, `file` is an etcd snapshot for the node's etcd member.
pub async fn restore(global: Global, file: Option<&Path>, snapshot: Option<String>, etcd: bool) -> Result<(), Failure> {
    let fmt = global.output;
    let session = Session::open(global)?;
    let (node, addr) = one_target(&session, "restore")?;
    let read_err = |p: &Path, e: std::io::Error| Failure::Other(format!("reading {}: {e}", p.display()));
    let opened = match file {
        Some(p) => {
            let f = tokio::fs::File::open(p).await.map_err(|e| read_err(p, e))?;
            let size = f.metadata().await.map_err(|e| read_err(p, e))?.len();
            Some((p.to_path_buf(), f, size))
        }
        None => None,
    };
    let size = opened.as_ref().map_or(0, |o| o.2);
    let options = api::RestoreOptions { size, snapshot: snapshot.unwrap_or_default(), etcd };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx.send(api::RestoreChunk { chunk: Some(api::restore_chunk::Chunk::Options(options)) }).await;
    let bar = output::progress(size, &format!("{node}: uploading"));
    let reader_bar = bar.clone();
    let reader = tokio::spawn(async move {
        let Some((path, mut f, _)) = opened else { return Ok::<(), Failure>(()) };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).await.map_err(|e| read_err(&path, e))?;
            if n == 0 {
                return Ok(());
            }
            let chunk = api::RestoreChunk { chunk: Some(api::restore_chunk::Chunk::Data(buf[..n].to_vec())) };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
            reader_bar.inc(n as u64);
        }
    });
    let mut c = session.client(&addr).await?;
    let result = c.restore(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    bar.finish_and_clear();
    reader.await.map_err(|e| Failure::Other(e.to_string()))??;
    let r = match result {
        Ok(r) => r.into_inner(),
        Err(s) => {
            // The node knows the file only as "the uploaded file": name it.
            let s = match file {
                Some(p) => {
                    tonic::Status::new(s.code(), s.message().replace("the uploaded file", &p.display().to_string()))
                }
                None => s,
            };
            return Err(session.failure(&node, &addr, s).await);
        }
    };
    match fmt {
        Format::Json => output::json(&serde_json::json!({"node": node, "summary": r.summary})),
        Format::Table => println!("{node}: {}", r.summary),
    }
    Ok(())
}
