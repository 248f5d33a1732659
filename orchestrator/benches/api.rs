//! API server benchmark: starts the `orchestrator` binary (fsync on, as
//! shipped), measures its idle RSS, then drives it over HTTPS with client
//! certificates from several keep-alive connections: creates/s, gets/s,
//! merge patches/s with latency percentiles, list latency, and RSS with
//! 2,000 PersistentVolumeClaims and 2,000 StatefulSets (0 replicas: their
//! revisions and status, no pods), watch latency with 1,000 watchers, and
//! RSS with 1,000 pods (controllers running; no node, so they stay
//! Pending); gets/s again with a ServiceAccount's bearer token instead of
//! a certificate.
//! `cargo bench -p orchestrator --bench api`

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader as TokioBufReader};
use tokio_rustls::client::TlsStream;

const CONNECTIONS: usize = 8;

/// The figures, printed only once every step has succeeded: a failed run
/// panics (exit status 101) and prints none.
static REPORT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

macro_rules! report {
    ($($t:tt)*) => { REPORT.lock().unwrap().push(format!($($t)*)) };
}

/// The server process, killed when the bench ends, panics included.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn kubeconfig_field(text: &str, field: &str) -> Vec<u8> {
    let line = text.lines().find_map(|l| l.trim().strip_prefix(&format!("{field}: "))).expect("field in kubeconfig");
    base64::engine::general_purpose::STANDARD.decode(line).unwrap()
}

/// TLS to the server, with the kubeconfig's client certificate or (`with_cert` false) none.
fn client_config(kubeconfig: &str, with_cert: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&kubeconfig_field(kubeconfig, "certificate-authority-data")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    if !with_cert {
        return Arc::new(builder.with_no_client_auth());
    }
    let cert = CertificateDer::from_pem_slice(&kubeconfig_field(kubeconfig, "client-certificate-data")).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&kubeconfig_field(kubeconfig, "client-key-data")).unwrap();
    Arc::new(builder.with_client_auth_cert(vec![cert], key).unwrap())
}

/// One keep-alive HTTP/1.1 connection (responses carry Content-Length),
/// and the `Authorization` header line it sends, if any. Like client-go's
/// pool, it does not reuse a connection idle for [`IDLE_REUSE`] (the
/// server closes idle ones after 90 s, as kube-apiserver does) but opens
/// a new one; any other failure — a connection closed under load, a
/// truncated answer — panics, so that no figure is printed from it.
struct Conn {
    io: TokioBufReader<TlsStream<tokio::net::TcpStream>>,
    auth: String,
    addr: String,
    cfg: Arc<rustls::ClientConfig>,
    from: Option<std::net::Ipv4Addr>,
    used: Instant,
    accept: &'static str,
}

/// Reopen rather than reuse a connection idle this long.
const IDLE_REUSE: Duration = Duration::from_secs(60);

impl Conn {
    /// A connection that sends `Authorization: Bearer <token>` with every request.
    async fn open_with_token(addr: &str, cfg: Arc<rustls::ClientConfig>, token: &str) -> Conn {
        let mut c = Conn::open(addr, cfg).await;
        c.auth = format!("Authorization: Bearer {token}\r\n");
        c
    }

    async fn open(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Conn {
        Conn::open_from(addr, cfg, None).await
    }

    /// A connection from source address `from` (a loopback address other
    /// than 127.0.0.1: the API server admits at most 256 authenticated
    /// connections per client address).
    async fn open_from(addr: &str, cfg: Arc<rustls::ClientConfig>, from: Option<std::net::Ipv4Addr>) -> Conn {
        let io = Conn::connect(addr, cfg.clone(), from).await;
        Conn {
            io,
            auth: String::new(),
            addr: addr.to_string(),
            cfg,
            from,
            used: Instant::now(),
            accept: "application/json",
        }
    }

    async fn connect(
        addr: &str,
        cfg: Arc<rustls::ClientConfig>,
        from: Option<std::net::Ipv4Addr>,
    ) -> TokioBufReader<TlsStream<tokio::net::TcpStream>> {
        let tcp = match from {
            None => tokio::net::TcpStream::connect(addr).await.unwrap(),
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((ip, 0).into()).unwrap();
                socket.connect(addr.parse().unwrap()).await.unwrap()
            }
        };
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("TLS handshake with the API server");
        TokioBufReader::new(tls)
    }

    async fn call(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        if self.used.elapsed() > IDLE_REUSE {
            self.io = Conn::connect(&self.addr, self.cfg.clone(), self.from).await;
        }
        let answer = self.exchange(method, path, content_type, body).await;
        self.used = Instant::now();
        answer.unwrap_or_else(|e| {
            panic!("{method} {path}: {e} (the connection was idle {:?} before it)", self.used.elapsed())
        })
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Accept: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.auth,
            self.accept,
            body.len()
        );
        let s = self.io.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        s.flush().await?;
        let mut line = String::new();
        if self.io.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut len = None;
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().ok();
            }
        }
        let len = len.ok_or_else(|| std::io::Error::other(format!("HTTP {code} without a Content-Length")))?;
        let mut buf = vec![0; len];
        self.io.read_exact(&mut buf).await?;
        Ok((code, buf))
    }
}

impl Conn {
    /// Starts a watch and returns a task that sends the arrival time of
    /// every event (one chunk each) until the connection closes.
    async fn watch(mut self, path: String, tx: tokio::sync::mpsc::UnboundedSender<Instant>) {
        let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n");
        self.io.get_mut().write_all(head.as_bytes()).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            self.io.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        loop {
            line.clear();
            if self.io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if size == 0 {
                return;
            }
            let mut chunk = vec![0; size + 2];
            if self.io.read_exact(&mut chunk).await.is_err() {
                return;
            }
            if tx.send(Instant::now()).is_err() {
                return;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

type Req = fn(usize) -> (&'static str, String, &'static str, Vec<u8>);

/// Runs `total` requests made by `req(i)`, spread over the connections;
/// returns them with (requests/s, p50, p99).
async fn run(conns: Vec<Conn>, total: usize, req: Req) -> (Vec<Conn>, f64, Duration, Duration) {
    let start = Instant::now();
    let per = total / conns.len();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(n, mut c)| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in n * per..(n + 1) * per {
                    let (m, path, ct, body) = req(i);
                    let t = Instant::now();
                    let (code, resp) = c.call(m, &path, ct, &body).await;
                    assert!(code < 300, "{m} {path}: {code} {}", String::from_utf8_lossy(&resp));
                    lat.push(t.elapsed());
                }
                (c, lat)
            })
        })
        .collect();
    let (mut conns, mut all) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, lat) = t.await.unwrap();
        conns.push(c);
        all.extend(lat);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (conns, all.len() as f64 / secs, percentile(&all, 0.5), percentile(&all, 0.99))
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("https://")).unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);
    let kubeconfig = std::fs::read_to_string(dir.path().join("admin.kubeconfig")).unwrap();
    let cfg = client_config(&kubeconfig, true);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut conns: Vec<Conn> = Vec::new();
        for _ in 0..CONNECTIONS {
            conns.push(Conn::open(&addr, cfg.clone()).await);
        }
        // What kubectl ≤1.27 fetches first: `/openapi/v2` in protobuf,
        // then JSON (the documents are written per request, never kept).
        let mut c = Conn::open(&addr, cfg.clone()).await;
        let mut sizes = Vec::new();
        for accept in ["application/com.github.proto-openapi.spec.v2@v1.0+protobuf", "application/json"] {
            c.accept = accept;
            let (code, body) = c.call("GET", "/openapi/v2", "application/json", &[]).await;
            assert_eq!(code, 200, "/openapi/v2 as {accept}");
            sizes.push(body.len());
        }
        let after_v2 = rss_kib(pid);
        let n = 2000;
        let create = |i: usize| {
            let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}","labels":{{"bench":"yes"}}}},"data":{{"k":"{}"}}}}"#, "x".repeat(512));
            ("POST", "/api/v1/namespaces/default/configmaps".to_string(), "application/json", body.into_bytes())
        };
        let (conns, rate, p50, p99) = run(conns, n, create).await;
        report!("create ConfigMap (512 B, fsync):  {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let get = |i: usize| ("GET", format!("/api/v1/namespaces/default/configmaps/cm-{i}"), "application/json", Vec::new());
        let (mut conns, rate, p50, p99) = run(conns, n, get).await;
        report!("get ConfigMap:                   {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        // The same gets as a ServiceAccount bound to cluster-admin, by bearer token.
        let admin = &mut conns[0];
        let sa = br#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"bench"}}"#;
        assert_eq!(admin.call("POST", "/api/v1/namespaces/default/serviceaccounts", "application/json", sa).await.0, 201);
        let binding = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"bench"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"},"subjects":[{"kind":"ServiceAccount","name":"bench","namespace":"default"}]}"#;
        let path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";
        assert_eq!(admin.call("POST", path, "application/json", binding).await.0, 201);
        let (code, answer) = admin.call("POST", "/api/v1/namespaces/default/serviceaccounts/bench/token", "application/json", b"{}").await;
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&answer));
        let token = serde_json::from_slice::<serde_json::Value>(&answer).unwrap()["status"]["token"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(500)).await; // the binding reaches the authorizer's index
        let token_cfg = client_config(&kubeconfig, false);
        let mut with_token = Vec::new();
        for _ in 0..CONNECTIONS {
            with_token.push(Conn::open_with_token(&addr, token_cfg.clone(), &token).await);
        }
        let (_, rate, p50, p99) = run(with_token, n, get).await;
        report!("get ConfigMap (bearer token):    {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let patch = |i: usize| {
            ("PATCH", format!("/api/v1/namespaces/default/configmaps/cm-{i}"), "application/merge-patch+json", br#"{"data":{"p":"1"}}"#.to_vec())
        };
        let (conns, rate, p50, p99) = run(conns, n, patch).await;
        report!("merge-patch ConfigMap (fsync):   {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let mut c = Conn::open(&addr, cfg.clone()).await;
        for (label, path) in [
            ("list 2,000 ConfigMaps", "/api/v1/namespaces/default/configmaps"),
            ("list first page (limit=500)", "/api/v1/namespaces/default/configmaps?limit=500"),
            ("list by label (2,000 match)", "/api/v1/configmaps?labelSelector=bench%3Dyes"),
        ] {
            let mut lat = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                let (code, body) = c.call("GET", path, "application/json", &[]).await;
                assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
                lat.push(t.elapsed());
            }
            lat.sort();
            report!("{label:<32} p50 {:>9.2?}   p99 {:>9.2?}", percentile(&lat, 0.5), percentile(&lat, 0.99));
        }
        let after_cms = rss_kib(pid);

        // StatefulSets and claims (issue 14): 2,000 claims of the default
        // class (Pending: no node), then 2,000 StatefulSets of 0 replicas
        // (each gets its ControllerRevision and status from the controller).
        let claim = |i: usize| {
            let body = format!(r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":"claim-{i}"}},"spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"1Gi"}}}}}}}}"#);
            ("POST", "/api/v1/namespaces/default/persistentvolumeclaims".to_string(), "application/json", body.into_bytes())
        };
        let (conns, rate, p50, p99) = run(conns, 2000, claim).await;
        report!("create PVC (fsync):              {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let sts = |i: usize| {
            let body = format!(r#"{{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{{"name":"sts-{i}"}},"spec":{{"replicas":0,"serviceName":"sts-{i}","selector":{{"matchLabels":{{"sts":"{i}"}}}},"template":{{"metadata":{{"labels":{{"sts":"{i}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36"}}]}}}},"volumeClaimTemplates":[{{"metadata":{{"name":"data"}},"spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"1Gi"}}}}}}}}]}}}}"#);
            ("POST", "/apis/apps/v1/namespaces/default/statefulsets".to_string(), "application/json", body.into_bytes())
        };
        let (conns, rate, p50, p99) = run(conns, 2000, sts).await;
        report!("create StatefulSet (fsync):      {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let settled = Instant::now();
        loop {
            let (_, body) = c.call("GET", "/apis/apps/v1/namespaces/default/controllerrevisions", "application/json", &[]).await;
            let n = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["items"].as_array().map_or(0, Vec::len);
            if n >= 2000 {
                report!("controller: 2,000 revisions in     {:>7.1?} after the last create", settled.elapsed());
                break;
            }
            assert!(settled.elapsed() < Duration::from_secs(300), "only {n} of 2,000 ControllerRevisions after 300 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let with_storage = rss_kib(pid);
        report!("RSS + 2,000 PVCs + 2,000 sts:    {:>7.1} MiB (before them: {:.1} MiB)", with_storage as f64 / 1024.0, after_cms as f64 / 1024.0);

        // The other kinds of issue 14, 2,000 each, created by a
        // ServiceAccount that only a namespaced Role allows (RBAC enforced,
        // escalation checks included): CronJobs (a schedule that does not
        // fire during the run), Roles, RoleBindings and a CRD's objects.
        let admin = &mut conns.into_iter().next().unwrap();
        let crd = br#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"widgets.bench.example.com"},"spec":{"group":"bench.example.com","scope":"Namespaced","names":{"plural":"widgets","singular":"widget","kind":"Widget"},"versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object","properties":{"spec":{"type":"object","properties":{"size":{"type":"integer"}}}}}}}]}}"#;
        let (code, answer) = admin.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "application/json", crd).await;
        assert_eq!(code, 201, "CRD: {}", String::from_utf8_lossy(&answer));
        let writer = br#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"writer"}}"#;
        assert_eq!(admin.call("POST", "/api/v1/namespaces/default/serviceaccounts", "application/json", writer).await.0, 201);
        let role = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"writer"},"rules":[{"apiGroups":["batch"],"resources":["cronjobs"],"verbs":["create"]},{"apiGroups":["rbac.authorization.k8s.io"],"resources":["roles","rolebindings"],"verbs":["create"]},{"apiGroups":["bench.example.com"],"resources":["widgets"],"verbs":["create"]},{"apiGroups":[""],"resources":["configmaps"],"verbs":["get"]}]}"#;
        let (code, answer) = admin.call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles", "application/json", role).await;
        assert_eq!(code, 201, "Role: {}", String::from_utf8_lossy(&answer));
        let binding = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"writer"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"writer"},"subjects":[{"kind":"ServiceAccount","name":"writer","namespace":"default"}]}"#;
        let (code, answer) = admin.call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", "application/json", binding).await;
        assert_eq!(code, 201, "RoleBinding: {}", String::from_utf8_lossy(&answer));
        let (code, answer) = admin.call("POST", "/api/v1/namespaces/default/serviceaccounts/writer/token", "application/json", b"{}").await;
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&answer));
        let token = serde_json::from_slice::<serde_json::Value>(&answer).unwrap()["status"]["token"].as_str().unwrap().to_string();
        let established = Instant::now();
        loop {
            let (code, _) = admin.call("GET", "/apis/bench.example.com/v1/namespaces/default/widgets?limit=1", "application/json", &[]).await;
            if code == 200 {
                break;
            }
            assert!(established.elapsed() < Duration::from_secs(30), "the CRD's widgets are not served after 30 s: {code}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // the binding reaches the authorizer's index
        let mut writers = Vec::new();
        for _ in 0..CONNECTIONS {
            writers.push(Conn::open_with_token(&addr, token_cfg.clone(), &token).await);
        }
        let cronjob = |i: usize| {
            let body = format!(r#"{{"apiVersion":"batch/v1","kind":"CronJob","metadata":{{"name":"cj-{i}"}},"spec":{{"schedule":"0 0 1 1 *","jobTemplate":{{"spec":{{"template":{{"spec":{{"restartPolicy":"Never","containers":[{{"name":"c","image":"busybox:1.36"}}]}}}}}}}}}}}}"#);
            ("POST", "/apis/batch/v1/namespaces/default/cronjobs".to_string(), "application/json", body.into_bytes())
        };
        let (writers, rate, p50, p99) = run(writers, 2000, cronjob).await;
        report!("create CronJob (RBAC, fsync):    {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let role = |i: usize| {
            let body = format!(r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"role-{i}"}},"rules":[{{"apiGroups":[""],"resources":["configmaps"],"resourceNames":["cm-{i}"],"verbs":["get"]}}]}}"#);
            ("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles".to_string(), "application/json", body.into_bytes())
        };
        let (writers, rate, p50, p99) = run(writers, 2000, role).await;
        report!("create Role (RBAC, fsync):       {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let role_binding = |i: usize| {
            let body = format!(r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"rb-{i}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"role-{i}"}},"subjects":[{{"kind":"User","name":"user-{i}"}}]}}"#);
            ("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings".to_string(), "application/json", body.into_bytes())
        };
        let (writers, rate, p50, p99) = run(writers, 2000, role_binding).await;
        report!("create RoleBinding (RBAC, fsync):{rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        let widget = |i: usize| {
            let body = format!(r#"{{"apiVersion":"bench.example.com/v1","kind":"Widget","metadata":{{"name":"w-{i}"}},"spec":{{"size":{i}}}}}"#);
            ("POST", "/apis/bench.example.com/v1/namespaces/default/widgets".to_string(), "application/json", body.into_bytes())
        };
        let (_, rate, p50, p99) = run(writers, 2000, widget).await;
        report!("create CRD object (RBAC, fsync): {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with_issue14 = rss_kib(pid);
        report!("RSS + 2,000 each CronJob/Role/RoleBinding/Widget: {:>7.1} MiB", with_issue14 as f64 / 1024.0);
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS {
            conns.push(Conn::open(&addr, cfg.clone()).await);
        }

        // Watch latency: 1,000 watchers of the namespace's ConfigMaps, one
        // patch at a time, time from sending it to each watcher's event.
        const WATCHERS: usize = 1000;
        let (_, list) = c.call("GET", "/api/v1/namespaces/default/configmaps?limit=1", "application/json", &[]).await;
        let rv = serde_json::from_slice::<serde_json::Value>(&list).unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..WATCHERS {
            // 200 watchers per source address, under the per-address budget.
            let from = std::net::Ipv4Addr::new(127, 0, 1, u8::try_from(1 + i / 200).unwrap());
            let w = Conn::open_from(&addr, cfg.clone(), Some(from)).await;
            let path = format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&fieldSelector=metadata.name%3Dcm-0");
            tokio::spawn(w.watch(path, tx.clone()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let with_watchers = rss_kib(pid);
        let mut lat = Vec::new();
        for i in 0..20 {
            let body = format!(r#"{{"data":{{"w":"{i}"}}}}"#);
            let sent = Instant::now();
            let (code, _) = c.call("PATCH", "/api/v1/namespaces/default/configmaps/cm-0", "application/merge-patch+json", body.as_bytes()).await;
            assert_eq!(code, 200);
            for _ in 0..WATCHERS {
                let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("an event").unwrap();
                lat.push(got.saturating_duration_since(sent));
            }
        }
        lat.sort();
        report!("watch latency, {WATCHERS} watchers:     p50 {:>9.2?}   p99 {:>9.2?}   (patch sent → event read)", percentile(&lat, 0.5), percentile(&lat, 0.99));
        let pod = |i: usize| {
            let body = format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"pod-{i}","labels":{{"app":"bench"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36","resources":{{"requests":{{"cpu":"10m","memory":"16Mi"}}}}}}]}}}}"#);
            ("POST", "/api/v1/namespaces/default/pods".to_string(), "application/json", body.into_bytes())
        };
        let (_conns, rate, p50, p99) = run(conns, 1000, pod).await;
        report!("create Pod (fsync):              {rate:>7.0}/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        report!("RSS idle:                        {:>7.1} MiB", idle as f64 / 1024.0);
        report!("RSS after /openapi/v2 (pb+JSON): {:>7.1} MiB ({} + {} bytes)", after_v2 as f64 / 1024.0, sizes[0], sizes[1]);
        report!("RSS after 2,000 ConfigMaps:      {:>7.1} MiB", after_cms as f64 / 1024.0);
        report!("RSS with 1,000 open watches:     {:>7.1} MiB", with_watchers as f64 / 1024.0);
        report!("RSS with 1,000 pods (settled):   {:>7.1} MiB", rss_kib(pid) as f64 / 1024.0);
    });
    drop(child);
    for line in REPORT.lock().unwrap().iter() {
        println!("{line}");
    }
}
