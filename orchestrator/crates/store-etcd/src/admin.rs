//! The etcd cluster's administration, for init (through `orchestrator
//! etcd …`) and tests: the member list, adding a member before it starts
//! (etcd's runtime reconfiguration: the new member is in the list, so the
//! cluster expects it, before its first start with
//! `--initial-cluster-state existing`), removing one, and a consistent
//! snapshot through the maintenance API.

use std::io::Write as _;
use std::path::Path;

use etcd_client::{Client, ConnectOptions};
use sha2::Digest as _;

use crate::EtcdConfig;

/// One member, as etcd lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// etcd's member ID in hexadecimal, as etcdctl prints it.
    pub id: String,
    /// Empty for a member added that has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("read the etcd client TLS files: {path}: {source}")]
    Tls { path: String, source: std::io::Error },
    #[error("etcd at {endpoints}: {op}: {reason}")]
    Etcd { op: &'static str, endpoints: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("the snapshot from {endpoints} is damaged: {reason}")]
    Damaged { endpoints: String, reason: String },
    #[error("no member named {name:?} (members: {have})")]
    NoMember { name: String, have: String },
    #[error(
        "{name} is the cluster's last etcd member: removing it ends the cluster and every object in it (take a \
         snapshot first; --force to go ahead)"
    )]
    LastMember { name: String },
    #[error(
        "removing {name} would lose etcd's quorum: of the {left} members left, {healthy} answer ({answering}) and \
         {needed} are needed; down: {down} (bring them back, or remove them first; --force to go ahead)"
    )]
    Quorum { name: String, left: usize, healthy: usize, needed: usize, answering: String, down: String },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
}

fn message(e: &etcd_client::Error) -> String {
    let mut m = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        m = format!("{m}: {c}");
        cause = c.source();
    }
    m
}

/// A client of the first of `cfg`'s endpoints that answers, in their
/// order: a client over all of them would send a request to a dead
/// member's endpoint as readily as to a live one (a member list with one
/// control plane down failed about half the time).
async fn client(cfg: &EtcdConfig) -> Result<Client, AdminError> {
    if cfg.endpoints.len() < 2 {
        return connect(cfg).await;
    }
    let mut last = None;
    for e in &cfg.endpoints {
        let one = EtcdConfig { endpoints: vec![e.clone()], tls: cfg.tls.clone(), timeout: cfg.timeout };
        let mut c = match connect(&one).await {
            Ok(c) => c,
            Err(err) => {
                last = Some(err);
                continue;
            }
        };
        match c.status().await {
            Ok(_) => return Ok(c),
            Err(err) => last = Some(etcd_error(&one, "ask the status", &err)),
        }
    }
    Err(match last {
        Some(AdminError::Etcd { op, reason, .. }) => {
            AdminError::Etcd { op, endpoints: cfg.endpoints.join(","), reason }
        }
        Some(other) => other,
        None => AdminError::Etcd { op: "connect", endpoints: String::new(), reason: "no endpoint".into() },
    })
}

async fn connect(cfg: &EtcdConfig) -> Result<Client, AdminError> {
    let mut options = ConnectOptions::new().with_timeout(cfg.timeout).with_connect_timeout(cfg.timeout);
    if let Some(tls) = &cfg.tls {
        let read =
            |p: &Path| std::fs::read(p).map_err(|source| AdminError::Tls { path: p.display().to_string(), source });
        options = options.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?))
                .identity(etcd_client::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?)),
        );
    }
    Client::connect(cfg.urls(), Some(options)).await.map_err(|e| etcd_error(cfg, "connect", &e))
}

fn etcd_error(cfg: &EtcdConfig, op: &'static str, e: &etcd_client::Error) -> AdminError {
    AdminError::Etcd { op, endpoints: cfg.endpoints.join(","), reason: message(e) }
}

fn member(m: &etcd_client::Member) -> Member {
    Member {
        id: format!("{:x}", m.id()),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        learner: m.is_learner(),
    }
}

/// The members, as the cluster lists them.
pub fn members(cfg: &EtcdConfig) -> Result<Vec<Member>, AdminError> {
    runtime().block_on(async {
        let mut c = client(cfg).await?;
        let r = c.member_list().await.map_err(|e| etcd_error(cfg, "list the members", &e))?;
        Ok(r.members().iter().map(member).collect())
    })
}

/// Adds a member that will serve its peers at `peer_url`, unless a member
/// with that peer URL is in the list already (a join that was cut short,
/// tried again). Returns etcd's `--initial-cluster` for the new member's
/// first start: every member's `name=peer-url`, the new one as `name`.
pub fn member_add(cfg: &EtcdConfig, name: &str, peer_url: &str) -> Result<String, AdminError> {
    runtime().block_on(async {
        let mut c = client(cfg).await?;
        let listed = c.member_list().await.map_err(|e| etcd_error(cfg, "list the members", &e))?;
        let mut all: Vec<Member> = listed.members().iter().map(member).collect();
        if !all.iter().any(|m| m.peer_urls.iter().any(|u| u == peer_url)) {
            let r = c.member_add([peer_url], None).await.map_err(|e| etcd_error(cfg, "add the member", &e))?;
            all = r.member_list().iter().map(member).collect();
        }
        Ok(initial_cluster(&all, name, peer_url))
    })
}

/// etcd's `--initial-cluster` for a member `name` joining at `peer_url`:
/// every member of the list, the new one as `name`. etcd checks it
/// against the cluster's member list by peer URLs and exits ("member
/// count is unequal") when one is missing, so a member that has joined
/// but not yet published its name (etcd accepts the next add once it has
/// been connected for a few seconds, which on a slow machine can come
/// first) is listed too, under its ID: the name of another member is not
/// checked.
pub fn initial_cluster(members: &[Member], name: &str, peer_url: &str) -> String {
    let mut parts = Vec::new();
    for m in members {
        let own = m.peer_urls.iter().any(|u| u == peer_url);
        let n = if own {
            name
        } else if m.name.is_empty() {
            m.id.as_str()
        } else {
            m.name.as_str()
        };
        for u in &m.peer_urls {
            parts.push(format!("{n}={u}"));
        }
    }
    parts.join(",")
}

/// Removes the member named `name` (a node's hostname).
pub fn member_remove(cfg: &EtcdConfig, name: &str) -> Result<Member, AdminError> {
    runtime().block_on(async {
        let mut c = client(cfg).await?;
        let listed = c.member_list().await.map_err(|e| etcd_error(cfg, "list the members", &e))?;
        let all: Vec<Member> = listed.members().iter().map(member).collect();
        let Some(m) = all.iter().find(|m| m.name == name).cloned() else {
            let have = all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(AdminError::NoMember { name: name.to_string(), have });
        };
        let id = u64::from_str_radix(&m.id, 16).unwrap_or_default();
        c.member_remove(id).await.map_err(|e| etcd_error(cfg, "remove the member", &e))?;
        Ok(m)
    })
}

/// What leaving the cluster did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// The member was removed (through the members that stay).
    Removed(Member),
    /// No member has that name (removed already: by the Node's deletion,
    /// or a reset tried again).
    NotAMember(String),
    /// The check alone (`check_only`): removing it keeps the quorum.
    WouldRemove(Member),
    /// Forced: the member was left in the list (the last one, or no
    /// quorum to change the list); why, in words.
    Kept(String),
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Removed(m) => write!(f, "etcd member {} ({}) removed", m.name, m.id),
            Left::NotAMember(name) => write!(f, "etcd member {name} removed already (not listed)"),
            Left::WouldRemove(m) => write!(f, "etcd member {} ({}) can leave: the others keep a quorum", m.name, m.id),
            Left::Kept(why) => write!(f, "etcd member kept (forced): {why}"),
        }
    }
}

/// Whether the member answers a status request on one of its client URLs.
async fn answers(cfg: &EtcdConfig, m: &Member) -> bool {
    let endpoints: Vec<String> = m
        .client_urls
        .iter()
        .map(|u| u.trim_start_matches("https://").trim_start_matches("http://").to_string())
        .collect();
    if endpoints.is_empty() {
        return false; // added, never started
    }
    let timeout = cfg.timeout.min(std::time::Duration::from_secs(2));
    let one = EtcdConfig { endpoints, tls: cfg.tls.clone(), timeout };
    let asked = async {
        let mut c = client(&one).await.ok()?;
        c.status().await.ok()
    };
    matches!(tokio::time::timeout(timeout, asked).await, Ok(Some(_)))
}

/// The name of the member that leads the cluster now, as the first member
/// that answers says (`None` without a leader).
pub fn leader(cfg: &EtcdConfig) -> Result<Option<String>, AdminError> {
    runtime().block_on(async {
        let mut c = client(cfg).await?;
        let status = c.status().await.map_err(|e| etcd_error(cfg, "ask the status", &e))?;
        let listed = c.member_list().await.map_err(|e| etcd_error(cfg, "list the members", &e))?;
        Ok(listed.members().iter().find(|m| m.id() == status.leader()).map(|m| m.name().to_string()))
    })
}

/// Which members must answer for a cluster of `left` voting members to
/// have a quorum: a majority.
pub fn quorum(left: usize) -> usize {
    left / 2 + 1
}

/// The member `name` leaves the cluster (a node reset, or its Node
/// deleted): removed through the others, unless that would lose the
/// quorum of the members that stay (too few of them answer) or it is the
/// last member — then refused, unless `force`, which keeps it in the list
/// and says why. With `check_only`, nothing changes.
pub fn leave(cfg: &EtcdConfig, name: &str, force: bool, check_only: bool) -> Result<Left, AdminError> {
    // Through the first of `cfg`'s endpoints that answers, in their order
    // (the others before the node's own, for a reset): see `client`.
    let all = match members(cfg) {
        Ok(all) => all,
        Err(e) if force => return Ok(Left::Kept(e.to_string())),
        Err(e) => return Err(e),
    };
    let Some(me) = all.iter().find(|m| m.name == name).cloned() else {
        return Ok(Left::NotAMember(name.to_string()));
    };
    let stay: Vec<&Member> = all.iter().filter(|m| m.id != me.id && !m.learner).collect();
    if stay.is_empty() {
        let e = AdminError::LastMember { name: name.to_string() };
        return if force { Ok(Left::Kept(e.to_string())) } else { Err(e) };
    }
    let up = runtime().block_on(async {
        let mut up = Vec::new();
        for m in &stay {
            up.push(answers(cfg, m).await);
        }
        up
    });
    let label = |m: &Member| if m.name.is_empty() { m.id.clone() } else { m.name.clone() };
    let answering: Vec<String> = stay.iter().zip(&up).filter(|(_, u)| **u).map(|(m, _)| label(m)).collect();
    let down: Vec<String> = stay.iter().zip(&up).filter(|(_, u)| !**u).map(|(m, _)| label(m)).collect();
    if answering.len() < quorum(stay.len()) {
        let e = AdminError::Quorum {
            name: name.to_string(),
            left: stay.len(),
            healthy: answering.len(),
            needed: quorum(stay.len()),
            answering: answering.join(", "),
            down: down.join(", "),
        };
        return if force { Ok(Left::Kept(e.to_string())) } else { Err(e) };
    }
    if check_only {
        return Ok(Left::WouldRemove(me));
    }
    match member_remove(cfg, name) {
        Ok(m) => Ok(Left::Removed(m)),
        Err(AdminError::NoMember { .. }) => Ok(Left::NotAMember(name.to_string())),
        Err(e) if force => Ok(Left::Kept(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Writes a consistent snapshot of the member's database to `out` (through
/// a temporary file renamed into place) and checks the sha256 etcd appends
/// to it. Returns its size in bytes.
pub fn snapshot(cfg: &EtcdConfig, out: &Path) -> Result<u64, AdminError> {
    let io = |op, source| AdminError::Io { op, path: out.display().to_string(), source };
    let tmp = out.with_extension("part");
    let written = runtime().block_on(async {
        let mut c = client(cfg).await?;
        let mut stream = c.snapshot().await.map_err(|e| etcd_error(cfg, "take a snapshot", &e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
        let mut size = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|e| etcd_error(cfg, "receive the snapshot", &e))? {
            f.write_all(chunk.blob()).map_err(|e| io("write", e))?;
            size += chunk.blob().len() as u64;
        }
        f.sync_all().map_err(|e| io("sync", e))?;
        Ok::<u64, AdminError>(size)
    });
    let checked = written.and_then(|size| {
        verify_snapshot(&tmp).map_err(|reason| AdminError::Damaged { endpoints: cfg.endpoints.join(","), reason })?;
        Ok(size)
    });
    match checked {
        Ok(size) => {
            std::fs::rename(&tmp, out).map_err(|e| io("rename into place", e))?;
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Checks a snapshot file as etcd's restore does: the sha256 of the
/// database is its last 32 bytes, and the database is a bbolt file
/// (its first page's magic).
pub fn verify_snapshot(path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 4096 + 32 {
        return Err(format!("{} bytes: too short for an etcd snapshot", data.len()));
    }
    let (db, sum) = data.split_at(data.len() - 32);
    if sha2::Sha256::digest(db).as_slice() != sum {
        return Err("its sha256 does not match the one etcd appended (truncated or altered)".into());
    }
    // bbolt's first meta page: a 16-byte page header, then the magic
    // 0xED0CDAED (a native-endian u32; little-endian on our targets).
    const MAGIC: u32 = 0xED0C_DAED;
    if u32::from_le_bytes([db[16], db[17], db[18], db[19]]) != MAGIC {
        return Err("not a bbolt database (etcd's backend)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, name: &str, peer: &str) -> Member {
        Member { id: id.into(), name: name.into(), peer_urls: vec![peer.into()], client_urls: vec![], learner: false }
    }

    #[test]
    fn the_initial_cluster_lists_every_member_the_new_one_by_its_name() {
        let list = [
            m("1", "cp1", "https://10.0.0.1:2380"),
            m("2", "", "https://10.0.0.2:2380"),
            m("3e", "", "https://10.0.0.3:2380"),
        ];
        assert_eq!(
            initial_cluster(&list, "cp2", "https://10.0.0.2:2380"),
            "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,3e=https://10.0.0.3:2380",
            "another member that has not published its name yet is listed under its ID"
        );
    }

    #[test]
    fn the_members_that_stay_need_a_majority() {
        // Two left of three: both must answer; one left: itself.
        assert_eq!([1, 2, 3, 4].map(quorum), [1, 2, 2, 3]);
    }

    #[test]
    fn a_damaged_or_foreign_snapshot_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut db = vec![0u8; 8192];
        db[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        let mut whole = db.clone();
        whole.extend_from_slice(&sha2::Sha256::digest(&db));
        std::fs::write(&path, &whole).unwrap();
        verify_snapshot(&path).unwrap();
        let mut flipped = whole.clone();
        flipped[5000] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(verify_snapshot(&path).unwrap_err().contains("sha256 does not match"));
        std::fs::write(&path, &whole[..whole.len() - 100]).unwrap();
        assert!(verify_snapshot(&path).unwrap_err().contains("sha256"), "a truncated one");
        let mut not_bolt = vec![0u8; 8192];
        not_bolt[0] = 1;
        let mut f = not_bolt.clone();
        f.extend_from_slice(&sha2::Sha256::digest(&not_bolt));
        std::fs::write(&path, &f).unwrap();
        assert!(verify_snapshot(&path).unwrap_err().contains("bbolt"));
        std::fs::write(&path, b"plinth-store-backup/v1\n").unwrap();
        assert!(verify_snapshot(&path).unwrap_err().contains("too short"));
    }
}
