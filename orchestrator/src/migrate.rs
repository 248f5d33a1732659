//! `orchestrator migrate`: a single node's SQLite store copied into etcd,
//! so that the node comes back as the first member of an HA control plane
//! (k3s does the same when a SQLite server is restarted with
//! `--cluster-init`). The copy is `orchestrator_store::migrate`; this
//! opens the two stores and says what was copied and what to do next.

use std::path::Path;

use orchestrator_store::{Durability, SqliteStore, migrate};
use orchestrator_store_etcd::{EtcdConfig, EtcdStore};

/// Copies DATA-DIR's SQLite store into the etcd of `etcd`; returns the report.
pub fn migrate(data_dir: &Path, url: &str, etcd: &EtcdConfig, force: bool) -> anyhow::Result<String> {
    let db = crate::backup::database(data_dir);
    if !db.exists() {
        anyhow::bail!("{}: no SQLite store to migrate (is --data-dir the server's?)", db.display());
    }
    // Refused (InUse) while an orchestrator serves it: a copy would miss its later writes.
    let from = SqliteStore::open(&db, Durability::Full)?;
    let to = EtcdStore::connect(etcd)?;
    let copied =
        migrate::copy(&from, &to, force).map_err(|e| anyhow::anyhow!("migrate {} to {url}: {e}", db.display()))?;
    let mut out = format!(
        "copied {} objects from {} (revision {}) to {url} (revision {}{})\n",
        copied.total(),
        db.display(),
        copied.source_revision,
        copied.target_revision,
        if copied.replaced > 0 { format!(", {} written over", copied.replaced) } else { String::new() },
    );
    for (collection, n) in &copied.by_collection {
        out.push_str(&format!("  {collection:<48} {n}\n"));
    }
    out.push_str(&format!(
        "{} is left as it was. Start the server on etcd with the same data directory (its CA, keys and \
         kubeconfigs): orchestrator server --data-dir {} --store {url}",
        db.display(),
        data_dir.display()
    ));
    Ok(out)
}
