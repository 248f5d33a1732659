//! etcd on a control plane of an HA cluster (`cluster.datastore = "etcd"`):
//! init issues the member's certificate from the Kubernetes CA (one per
//! node, for its address: it serves clients and peers and is their
//! client), and runs Debian's etcd as the supervised service `etcd`, its
//! data on EPHEMERAL, its log in `osctl logs etcd`. The orchestrator
//! then keeps its objects there (`--store etcd://…` with the same
//! certificate).
//!
//! Forming the cluster: the control plane whose config says
//! `etcd_bootstrap = true` (or the only one listed) starts a new cluster
//! when it has no etcd data (k3s' `--cluster-init`: a config flag, not
//! an `osctl bootstrap` call, because a Plinth node comes up from its
//! signed config alone, e.g. flashed with it, with no operator step after
//! power-on). Every other control plane joins: through a running member,
//! authenticated by a certificate of the cluster's CA, it adds itself to
//! the member list (etcd's runtime reconfiguration) and only then starts
//! its etcd with `--initial-cluster-state existing`. A member with data
//! restarts on it (etcd ignores the initial flags then). The join goes
//! through `orchestrator etcd member-add` (init has no etcd client of its
//! own: the orchestrator's is the one the store uses).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use machinery::config::{self, MachineConfig};
use machinery::layout::{ETCD_CLIENT_PORT, ETCD_PEER_PORT};

/// The service name of the etcd member.
pub const ETCD: &str = "etcd";

/// Where init finds etcd and keeps its data.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub program: PathBuf,
    /// The member's data (`data/`) and certificates (`pki/`), on EPHEMERAL.
    pub dir: PathBuf,
    /// The member certificate's lifetime (none: `machinery::pki::LEAF_LIFETIME`);
    /// init renews it at [`renew_after`].
    pub cert_lifetime: Option<std::time::Duration>,
}

/// When a member certificate of `lifetime` is renewed: at 80 % of it (as
/// apid's, at 70–90 %), so that a node that runs for a year without
/// restarting its etcd never presents an expired one. etcd reads its
/// certificate files at each TLS handshake, and the orchestrator's store
/// reads them again when they change: neither restarts.
pub(super) fn renew_after(lifetime: std::time::Duration) -> std::time::Duration {
    lifetime * 4 / 5
}

/// This node's member, from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub name: String,
    pub address: IpAddr,
    /// The other control planes' addresses.
    pub others: Vec<IpAddr>,
    /// Forms a new cluster when it has no data.
    pub bootstrap: bool,
    /// etcd's `--initial-cluster-token`: a cluster's members only talk to
    /// each other.
    pub cluster_token: String,
}

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

pub(super) fn peer_url(ip: &IpAddr) -> String {
    format!("https://{}:{ETCD_PEER_PORT}", host(ip))
}

pub(super) fn client_endpoint(ip: &IpAddr) -> String {
    format!("{}:{ETCD_CLIENT_PORT}", host(ip))
}

/// The member a config asks for: `None` unless it is a control plane on etcd.
pub(super) fn plan(c: &MachineConfig) -> Option<Member> {
    if c.cluster.role != config::Role::Controlplane || c.cluster.datastore != config::Datastore::Etcd {
        return None;
    }
    let address = c.etcd_address()?;
    let others: Vec<IpAddr> = c.etcd_peers().into_iter().filter(|p| *p != address).collect();
    Some(Member {
        name: c.machine.hostname.clone(),
        address,
        bootstrap: c.cluster.etcd_bootstrap || others.is_empty(),
        others,
        cluster_token: c.cluster.id.clone().unwrap_or_else(|| c.cluster.name.clone()),
    })
}

/// The member's files: the CA, its certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub data: PathBuf,
}

impl Files {
    pub fn under(dir: &Path) -> Files {
        let pki = dir.join("pki");
        Files {
            ca: pki.join("ca.crt"),
            cert: pki.join("member.crt"),
            key: pki.join("member.key"),
            data: dir.join("data"),
        }
    }

    /// Whether the member has started before (etcd's write-ahead log): a
    /// restored snapshot (`member/snap/db` alone) starts a new cluster.
    pub fn has_data(&self) -> bool {
        self.data.join("member").join("wal").is_dir()
    }

    /// Where a restore keeps the member's previous data.
    pub fn before_restore(&self) -> PathBuf {
        self.data.with_file_name("data.before-restore")
    }
}

/// Issues the member's certificate from the Kubernetes CA, valid for
/// `lifetime`, and writes it with the CA (0600 files in a 0700 directory,
/// each replaced through a rename). A new one each start, and each
/// renewal: the address may have changed, and nothing pins it.
pub(super) fn write_certs(
    m: &Member,
    ca: &machinery::pki::CertKey,
    files: &Files,
    lifetime: std::time::Duration,
) -> Result<(), String> {
    let names = vec![m.address.to_string(), "127.0.0.1".to_string(), "localhost".to_string()];
    let cert = machinery::pki::issue_etcd_member(ca, &m.name, &names, lifetime)
        .map_err(|e| format!("issuing etcd's certificate: {e}"))?;
    let dir = files.ca.parent().unwrap_or(Path::new("/"));
    crate::store::private_dir(dir)
        .and_then(|_| crate::store::write_private(&files.ca, ca.cert_pem.as_bytes()))
        .and_then(|_| crate::store::write_private(&files.key, cert.key_pem.as_bytes()))
        .and_then(|_| crate::store::write_private(&files.cert, cert.cert_pem.as_bytes()))
        .map_err(|e| format!("writing etcd's certificates under {}: {e}", dir.display()))
}

/// How the member starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Start {
    /// On its data.
    Restart,
    /// A new cluster of this member alone.
    New,
    /// A member added to a running cluster: its `--initial-cluster`.
    Join(String),
}

/// etcd's command line. Besides the member's address it serves clients on
/// 127.0.0.1 (the orchestrator beside it). `--snapshot-count` is lowered
/// from 3.4's 100,000 to keep fewer entries in memory (etcd's own advice
/// for small machines).
pub(super) fn args(m: &Member, files: &Files, start: &Start) -> Vec<String> {
    let client = format!("https://{}", client_endpoint(&m.address));
    let mut listen_client = client.clone();
    if !m.address.is_loopback() {
        listen_client.push_str(&format!(",https://127.0.0.1:{ETCD_CLIENT_PORT}"));
    }
    let p = |s: &Path| s.display().to_string();
    let mut a: Vec<String> = [
        ("--name", m.name.clone()),
        ("--data-dir", p(&files.data)),
        ("--listen-client-urls", listen_client),
        ("--advertise-client-urls", client),
        ("--listen-peer-urls", peer_url(&m.address)),
        ("--initial-advertise-peer-urls", peer_url(&m.address)),
        ("--cert-file", p(&files.cert)),
        ("--key-file", p(&files.key)),
        ("--trusted-ca-file", p(&files.ca)),
        ("--peer-cert-file", p(&files.cert)),
        ("--peer-key-file", p(&files.key)),
        ("--peer-trusted-ca-file", p(&files.ca)),
        ("--initial-cluster-token", m.cluster_token.clone()),
        ("--snapshot-count", "10000".into()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();
    a.extend(["--client-cert-auth".into(), "--peer-client-cert-auth".into()]);
    match start {
        Start::Restart => {}
        Start::New => {
            a.extend(["--initial-cluster".into(), format!("{}={}", m.name, peer_url(&m.address))]);
            a.extend(["--initial-cluster-state".into(), "new".into()]);
        }
        Start::Join(initial) => {
            a.extend(["--initial-cluster".into(), initial.clone()]);
            a.extend(["--initial-cluster-state".into(), "existing".into()]);
        }
    }
    a
}

/// The orchestrator's store options: its own member first, then the
/// others, with the member's certificate as client certificate.
pub(super) fn store_args(m: &Member, files: &Files) -> Vec<String> {
    let endpoints: Vec<String> = std::iter::once(&m.address).chain(&m.others).map(client_endpoint).collect();
    store_options(&endpoints, files)
}

/// `--store etcd://… --etcd-ca … --etcd-cert … --etcd-key …`.
pub(super) fn store_options(endpoints: &[String], files: &Files) -> Vec<String> {
    vec![
        "--store".into(),
        format!("etcd://{}", endpoints.join(",")),
        "--etcd-ca".into(),
        files.ca.display().to_string(),
        "--etcd-cert".into(),
        files.cert.display().to_string(),
        "--etcd-key".into(),
        files.key.display().to_string(),
    ]
}

/// How the member starts: on its data, as a new cluster, or joined
/// through the others (`orchestrator etcd member-add`, tried until one
/// answers; `report` hears each failure).
pub(super) async fn prepare(m: &Member, files: &Files, orchestrator: &Path, mut report: impl FnMut(String)) -> Start {
    if files.has_data() {
        return Start::Restart;
    }
    if m.bootstrap {
        return Start::New;
    }
    let endpoints: Vec<String> = m.others.iter().map(client_endpoint).collect();
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let mut cmd = std::process::Command::new(orchestrator);
        cmd.arg("etcd").args(store_options(&endpoints, files));
        cmd.args(["member-add", "--name", &m.name, "--peer-url", &peer_url(&m.address)]);
        match crate::supervisor::output(cmd).await {
            Ok(out) if out.status.success() => {
                let initial = String::from_utf8_lossy(&out.stdout).trim().to_string();
                report(format!("added to the etcd cluster through {}: {initial}", endpoints.join(",")));
                return Start::Join(initial);
            }
            Ok(out) => report(format!(
                "joining the etcd cluster through {} (again in {wait:?}): {}",
                endpoints.join(","),
                String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("Error: ")
            )),
            Err(e) => report(format!("running {}: {e}", orchestrator.display())),
        }
        tokio::time::sleep(wait).await;
        // Short: control planes configured at once join one at a time (etcd
        // refuses an add while another added member has not started), so
        // each waits for the one before it to start, not for a failure.
        wait = (wait * 2).min(JOIN_RETRY_MAX);
    }
}

/// The longest pause between two tries to join the etcd cluster.
const JOIN_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `orchestrator etcd STORE-OPTIONS ARGS`: its output, or its error.
async fn orchestrator_etcd(
    program: &Path,
    store: &[String],
    args: &[&std::ffi::OsStr],
) -> Result<String, tonic::Status> {
    let mut cmd = std::process::Command::new(program);
    cmd.arg("etcd").args(store).args(args);
    let out = crate::supervisor::output(cmd)
        .await
        .map_err(|e| tonic::Status::internal(format!("{}: {e}", program.display())))?;
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().trim_start_matches("Error: ").to_string();
    if out.status.success() { Ok(said(&out.stdout)) } else { Err(tonic::Status::unavailable(said(&out.stderr))) }
}

/// A member as `orchestrator etcd members` prints it.
#[derive(serde::Deserialize)]
struct Listed {
    id: String,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    learner: bool,
}

impl super::Machine {
    /// The orchestrator program and the store options of this node's
    /// member, or why it has none.
    async fn etcd_node(&self) -> Result<(PathBuf, Vec<String>, PathBuf), tonic::Status> {
        let config = self.state.lock().await.active.as_ref().map(|a| a.config.clone());
        let Some(config) = config else {
            return Err(tonic::Status::failed_precondition("this node has no config applied"));
        };
        let Some(member) = plan(&config) else {
            return Err(tonic::Status::failed_precondition(
                "this node runs no etcd member: it is a worker, or its cluster.datastore is not \"etcd\"",
            ));
        };
        let o = self.settings.orchestrator.as_ref();
        let Some((o, e)) = o.and_then(|o| o.etcd.as_ref().map(|e| (o, e))) else {
            return Err(tonic::Status::failed_precondition("this node's image carries no etcd"));
        };
        let files = Files::under(&e.dir);
        // Its own member only: the answer is that member's view.
        let own = store_options(&[client_endpoint(&member.address)], &files);
        Ok((o.program.clone(), own, e.dir.clone()))
    }

    pub(super) async fn etcd_members(&self) -> Result<machinery::api::EtcdMembersResponse, tonic::Status> {
        let (program, store, _) = self.etcd_node().await?;
        let json = orchestrator_etcd(&program, &store, &["members".as_ref()]).await?;
        let listed: Vec<Listed> = serde_json::from_str(&json)
            .map_err(|e| tonic::Status::internal(format!("orchestrator etcd members: {e}: {json}")))?;
        let members = listed
            .into_iter()
            .map(|m| machinery::api::EtcdMember {
                id: m.id,
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                learner: m.learner,
            })
            .collect();
        Ok(machinery::api::EtcdMembersResponse { members })
    }

    pub(super) async fn etcd_snapshot(&self) -> Result<super::Stream_<machinery::api::BackupChunk>, tonic::Status> {
        let (program, store, dir) = self.etcd_node().await?;
        let file = dir.join(format!("snapshot-{}.db", std::process::id()));
        let written =
            orchestrator_etcd(&program, &store, &["snapshot".as_ref(), "--out".as_ref(), file.as_os_str()]).await;
        let (size, stream) = super::cluster_store::stream_file(written, &file).await?;
        crate::supervisor::event(&self.events, ETCD, format!("etcd snapshot taken ({size} bytes)"));
        Ok(stream)
    }

    /// A reset control plane's member leaves (`orchestrator etcd leave`
    /// through the other members first): `None` on a node with no member;
    /// with `check`, only whether it may (the others keep a quorum, it is
    /// not the last), so that a reset refuses before it drains anything.
    pub(super) async fn etcd_leave(&self, force: bool, check: bool) -> Result<Option<String>, String> {
        let config = self.state.lock().await.active.as_ref().map(|a| a.config.clone());
        let Some(member) = config.as_ref().and_then(plan) else { return Ok(None) };
        let o = self.settings.orchestrator.as_ref();
        let Some((o, e)) = o.and_then(|o| o.etcd.as_ref().map(|e| (o, e))) else { return Ok(None) };
        let files = Files::under(&e.dir);
        if !files.has_data() {
            return Ok(None); // its etcd never started: not a member
        }
        let endpoints: Vec<String> =
            member.others.iter().chain(std::iter::once(&member.address)).map(client_endpoint).collect();
        let store = store_options(&endpoints, &files);
        let mut args: Vec<&std::ffi::OsStr> = vec!["leave".as_ref(), "--name".as_ref(), member.name.as_ref()];
        if force {
            args.push("--force".as_ref());
        }
        if check {
            args.push("--check".as_ref());
        }
        match orchestrator_etcd(&o.program, &store, &args).await {
            Ok(said) => Ok(Some(said)),
            Err(status) => Err(status.message().to_string()),
        }
    }

    /// `osctl etcd restore`: the uploaded snapshot `from` becomes this
    /// member's data, a new cluster of this member alone. Checked while
    /// everything runs (a damaged file changes nothing); then the
    /// orchestrator and etcd stop, the member's data is moved aside
    /// (`data.before-restore`, put back if the restore fails), the snapshot
    /// is written, and etcd starts as a new cluster, then the orchestrator.
    pub(super) async fn etcd_restore(&self, from: &Path) -> Result<machinery::api::RestoreResponse, tonic::Status> {
        use tonic::Status;
        let config = self.state.lock().await.active.as_ref().map(|a| a.config.clone());
        let Some(member) = config.as_ref().and_then(plan) else {
            return Err(Status::failed_precondition(
                "this node runs no etcd member: it is a worker, or its cluster.datastore is not \"etcd\"",
            ));
        };
        if !member.others.is_empty() {
            let others: Vec<String> = member.others.iter().map(ToString::to_string).collect();
            return Err(Status::failed_precondition(format!(
                "a restore makes a new etcd cluster of this member alone, but cluster.endpoints lists other control \
                 planes too ({}): apply a config listing this control plane alone, restore, then join the others \
                 (reset first)",
                others.join(", ")
            )));
        }
        let o = self.settings.orchestrator.as_ref();
        let Some((o, e)) = o.and_then(|o| o.etcd.as_ref().map(|e| (o, e))) else {
            return Err(Status::failed_precondition("this node's image carries no etcd"));
        };
        let files = Files::under(&e.dir);
        let run = async |args: &[&std::ffi::OsStr]| {
            orchestrator_etcd(&o.program, &[], args).await.map_err(|s| Status::failed_precondition(s.message()))
        };
        let what = run(&["restore".as_ref(), "--check".as_ref(), from.as_os_str()]).await?;
        let what = what.rsplit(": ").next().unwrap_or_default().to_string();
        let _one = self.cluster_starting.lock().await;
        let services = [crate::machine::ORCHESTRATOR, ETCD];
        let running: Vec<&str> = services.into_iter().filter(|s| self.supervises(s)).collect();
        for s in &running {
            self.supervisor.stop(s).await.map_err(|e| Status::internal(e.to_string()))?;
        }
        let aside = files.before_restore();
        let moved = files.data.exists();
        let prepared = (|| {
            if aside.exists() {
                std::fs::remove_dir_all(&aside)?;
            }
            if moved {
                std::fs::rename(&files.data, &aside)?;
            }
            Ok::<(), std::io::Error>(())
        })()
        .map_err(|err| Status::internal(format!("moving {} aside: {err}", files.data.display())));
        let restored = match prepared {
            Ok(()) => run(&["restore".as_ref(), from.as_os_str(), "--data-dir".as_ref(), files.data.as_os_str()]).await,
            Err(e) => Err(e),
        };
        if restored.is_err() && moved && aside.exists() {
            let _ = std::fs::remove_dir_all(&files.data);
            let _ = std::fs::rename(&aside, &files.data);
        } else if restored.is_ok() {
            // Its first start forms the new cluster; later ones restart on the data.
            let _ = self.supervisor.set_args(ETCD, args(&member, &files, &Start::New));
        }
        for s in running.iter().rev() {
            let _ = self.supervisor.resume(s);
        }
        restored?;
        let kept = if moved { format!("; its previous data is kept in {}", aside.display()) } else { String::new() };
        crate::supervisor::event(&self.events, ETCD, format!("etcd restored from a snapshot ({what})"));
        Ok(machinery::api::RestoreResponse {
            summary: format!("etcd restored: {what}, a new cluster of {} alone{kept}", member.name),
        })
    }

    pub(super) async fn etcd_remove_member(
        &self,
        name: &str,
    ) -> Result<machinery::api::EtcdRemoveMemberResponse, tonic::Status> {
        let (program, store, _) = self.etcd_node().await?;
        let summary = orchestrator_etcd(&program, &store, &["member-remove".as_ref(), name.as_ref()]).await?;
        crate::supervisor::event(&self.events, ETCD, summary.clone());
        Ok(machinery::api::EtcdRemoveMemberResponse { summary })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(host: &str, addr: &str, extra: &str) -> MachineConfig {
        let ca = machinery::pki::generate_ca("t").unwrap();
        let text = format!(
            "version = 3\n[machine]\nhostname = \"{host}\"\n[[machine.network.interfaces]]\nname = \"eth0\"\naddresses = [\"{addr}/24\"]\n\
             [cluster]\nname = \"demo\"\nrole = \"controlplane\"\ndatastore = \"etcd\"\n\
             endpoints = [\"https://10.0.0.1:6443\", \"https://10.0.0.2:6443\"]\n{extra}\n\
             [api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
            ca.cert_pem, ca.key_pem
        );
        MachineConfig::parse("node.toml", &text).unwrap()
    }

    #[test]
    fn the_bootstrap_node_forms_the_cluster_and_the_others_join_it() {
        let first = plan(&config("cp1", "10.0.0.1", "etcd_bootstrap = true")).unwrap();
        assert!(first.bootstrap);
        assert_eq!(first.others, ["10.0.0.2".parse::<IpAddr>().unwrap()]);
        let second = plan(&config("cp2", "10.0.0.2", "")).unwrap();
        assert!(!second.bootstrap, "a second control plane joins");
        let files = Files::under(Path::new("/var/lib/etcd"));
        let a = args(&first, &files, &Start::New);
        let val = |a: &[String], k: &str| a.iter().position(|x| x == k).map(|i| a[i + 1].clone());
        assert_eq!(val(&a, "--initial-cluster").as_deref(), Some("cp1=https://10.0.0.1:2380"));
        assert_eq!(val(&a, "--initial-cluster-state").as_deref(), Some("new"));
        assert_eq!(val(&a, "--listen-client-urls").as_deref(), Some("https://10.0.0.1:2379,https://127.0.0.1:2379"));
        assert_eq!(val(&a, "--data-dir").as_deref(), Some("/var/lib/etcd/data"));
        assert!(a.contains(&"--client-cert-auth".to_string()) && a.contains(&"--peer-client-cert-auth".to_string()));
        let j = args(&second, &files, &Start::Join("cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380".into()));
        assert_eq!(val(&j, "--initial-cluster-state").as_deref(), Some("existing"));
        let r = args(&second, &files, &Start::Restart);
        assert_eq!(val(&r, "--initial-cluster"), None, "a member with data restarts on it");
        // The orchestrator uses its own member first.
        assert_eq!(val(&store_args(&second, &files), "--store").as_deref(), Some("etcd://10.0.0.2:2379,10.0.0.1:2379"));
    }

    #[test]
    fn a_sqlite_node_or_a_lone_etcd_node() {
        let mut c = config("cp1", "10.0.0.1", "");
        c.cluster.endpoints.clear();
        let lone = plan(&c).unwrap();
        assert!(lone.bootstrap, "the only control plane listed forms the cluster");
        c.cluster.datastore = config::Datastore::Sqlite;
        assert_eq!(plan(&c), None);
    }

    #[test]
    fn the_member_certificate_is_renewed_in_place_before_it_expires() {
        use std::time::Duration;
        assert_eq!(renew_after(Duration::from_secs(30)), Duration::from_secs(24));
        assert!(renew_after(machinery::pki::LEAF_LIFETIME) < machinery::pki::LEAF_LIFETIME);
        let ca = machinery::pki::generate_ca("t").unwrap();
        let m = plan(&config("cp1", "10.0.0.1", "etcd_bootstrap = true")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = Files::under(dir.path());
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        write_certs(&m, &ca, &files, Duration::from_secs(30)).unwrap();
        let (first, first_key) = (read(&files.cert), read(&files.key));
        let short = machinery::pki::cert_info(&first).unwrap();
        assert!(short.not_after - short.not_before <= 30 + 5 * 60, "{short:?}");
        write_certs(&m, &ca, &files, machinery::pki::LEAF_LIFETIME).unwrap();
        let renewed = machinery::pki::cert_info(&read(&files.cert)).unwrap();
        assert!(renewed.not_after > short.not_after + 3600);
        assert_ne!(read(&files.key), first_key, "a new key with the new certificate");
        assert_eq!(renewed.common_name, "cp1");
    }

    #[test]
    fn the_member_certificate_names_its_address_and_serves_both_ways() {
        let ca = machinery::pki::generate_ca("t").unwrap();
        let m = plan(&config("cp1", "10.0.0.1", "etcd_bootstrap = true")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = Files::under(dir.path());
        write_certs(&m, &ca, &files, machinery::pki::LEAF_LIFETIME).unwrap();
        let info = machinery::pki::cert_info(&std::fs::read_to_string(&files.cert).unwrap()).unwrap();
        assert_eq!(info.common_name, "cp1");
        assert_eq!(info.issuer, machinery::pki::cert_info(&ca.cert_pem).unwrap().subject);
        assert!(!files.has_data());
    }
}
