//! A host-mode etcd cluster of 1 or 3 members on loopback, for tests and
//! benchmarks: Debian's `etcd` (the `etcd-server` package) on free ports,
//! each member's data in a directory of its own, every member killed when
//! the cluster is dropped. Members can be killed with SIGKILL and started
//! again on their data, as a crashed control plane restarts.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// etcd's request limit for these clusters: a value of the store's
/// [`orchestrator_store::MAX_VALUE_BYTES`] with its key and the
/// transaction around it fits (etcd's default is exactly 1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no etcd binary: set PLINTH_ETCD or install Debian's etcd-server (scripts/setup-debian.sh)")]
    NoEtcd,
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("etcd member {name} did not serve on {endpoint} within {waited:?}; its log {log}:\n{tail}")]
    NotServing { name: String, endpoint: String, waited: Duration, log: PathBuf, tail: String },
}

/// The etcd binary: `$PLINTH_ETCD`, else `etcd` on the PATH, else Debian's.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::var_os("PLINTH_ETCD")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join("etcd")))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
}

/// Whether tests can start etcd: without it they are skipped with a
/// message, except under `CI=true`, where a missing etcd is a failure.
pub fn available() -> bool {
    if etcd_binary().is_some() {
        return true;
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI: {}", LocalError::NoEtcd);
    eprintln!("SKIPPED: {}", LocalError::NoEtcd);
    false
}

struct Member {
    name: String,
    client_port: u16,
    /// Plain HTTP `/health` and `/metrics`, with or without client TLS.
    metrics_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Client TLS on the members: their serving certificate and key (for
/// 127.0.0.1), and the CA that clients' certificates must chain to (PEM
/// files). Peers talk plain HTTP on loopback.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running local cluster.
pub struct LocalCluster {
    binary: PathBuf,
    tls: Option<ServerTls>,
    dir: PathBuf,
    /// Removed on drop, unless the cluster was started in a caller's directory.
    _temp: Option<tempfile::TempDir>,
    initial_cluster: String,
    peer_ports: Vec<u16>,
    members: Vec<Member>,
}

fn free_port() -> Result<u16, LocalError> {
    let io = |source| LocalError::Io { op: "bind", path: PathBuf::from("127.0.0.1:0"), source };
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(io)
}

impl LocalCluster {
    /// `members` fresh members (1 or 3) in a temporary directory.
    pub fn start(members: usize) -> Result<LocalCluster, LocalError> {
        let temp = tempfile::tempdir().map_err(|source| LocalError::Io {
            op: "create a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
        let mut c = LocalCluster::start_in(temp.path(), members)?;
        c._temp = Some(temp);
        Ok(c)
    }

    /// `members` members with their data under `dir` (kept after the drop).
    pub fn start_in(dir: &Path, members: usize) -> Result<LocalCluster, LocalError> {
        LocalCluster::start_with(dir, members, None)
    }

    /// As [`LocalCluster::start_in`], serving clients over TLS with
    /// client certificates required when `tls` is given. A free port
    /// taken by another process before etcd bound it (the port is chosen
    /// by binding and closing it) starts the cluster again on others, up
    /// to three times.
    pub fn start_with(dir: &Path, members: usize, tls: Option<ServerTls>) -> Result<LocalCluster, LocalError> {
        let mut tries = 0;
        loop {
            match LocalCluster::try_start(dir, members, tls.clone()) {
                Err(LocalError::NotServing { tail, .. }) if tail.contains("address already in use") && tries < 2 => {
                    tries += 1;
                    for i in 0..members {
                        let _ = std::fs::remove_dir_all(dir.join(format!("m{i}")));
                    }
                }
                r => return r,
            }
        }
    }

    fn try_start(dir: &Path, members: usize, tls: Option<ServerTls>) -> Result<LocalCluster, LocalError> {
        let binary = etcd_binary().ok_or(LocalError::NoEtcd)?;
        std::fs::create_dir_all(dir).map_err(|source| LocalError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let peer_ports = (0..members).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members_v = Vec::new();
        for i in 0..members {
            members_v.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                metrics_port: free_port()?,
                data: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                child: None,
            });
        }
        let mut c = LocalCluster {
            binary,
            tls,
            dir: dir.to_path_buf(),
            _temp: None,
            initial_cluster,
            peer_ports,
            members: members_v,
        };
        for i in 0..members {
            c.spawn(i)?;
        }
        for i in 0..members {
            c.wait_serving(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), LocalError> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|source| LocalError::Io { op: "open", path: m.log.clone(), source })?;
        let err = log.try_clone().map_err(|source| LocalError::Io { op: "open", path: m.log.clone(), source })?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_ports[i]);
        let mut cmd = Command::new(&self.binary);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.cert).arg("--key-file").arg(&t.key);
            cmd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", m.metrics_port)])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("plinth-{}", self.peer_ports[0])])
            .args(["--max-request-bytes", &MAX_REQUEST_BYTES.to_string()])
            // Two cores shared by many processes: a slower election, fewer false ones.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| LocalError::Io { op: "run", path: self.binary.clone(), source })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers its health endpoint (not once it
    /// has exited).
    fn wait_serving(&mut self, i: usize) -> Result<(), LocalError> {
        let waited = Duration::from_secs(30);
        let start = Instant::now();
        while start.elapsed() < waited {
            if health(self.members[i].metrics_port) {
                return Ok(());
            }
            if self.members[i].child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let m = &self.members[i];
        let tail = std::fs::read_to_string(&m.log).unwrap_or_default();
        let tail = tail.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        Err(LocalError::NotServing {
            name: m.name.clone(),
            endpoint: format!("127.0.0.1:{}", m.client_port),
            waited: start.elapsed(),
            log: m.log.clone(),
            tail,
        })
    }

    /// `host:port` of every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
    }

    /// The `--store` URL naming every member.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs member `i` (no clean shutdown).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (after [`LocalCluster::kill`]).
    /// Waits only when a quorum will be there to answer.
    pub fn restart(&mut self, i: usize) -> Result<(), LocalError> {
        self.spawn(i)?;
        let up = self.members.iter().filter(|m| m.child.is_some()).count();
        if up * 2 > self.members.len() { self.wait_serving(i) } else { Ok(()) }
    }
}

/// Whether etcd's `/health` on its metrics `port` says the member serves
/// (it has a leader and its store answers).
fn health(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
