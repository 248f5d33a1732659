//! Test support for the kubelet: a private containerd (own root, state,
//! socket and CNI config directory under a temporary directory; CRI with
//! cgroupfs, runc and `restrict_oom_score_adj`), a busybox and a pause
//! image built once from Debian's busybox-static and a static C program
//! (umoci + skopeo, imported with ctr), and the control plane with the
//! kubelet in one `orchestrator server --kubelet` process.
//!
//! Everything is removed on drop, even when a test fails: the pod
//! sandboxes through CRI (which releases IPs, iptables rules and network
//! namespaces), the shims, containerd, mounts under the directory, and the
//! CNI bridge.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "docker.io/library/busybox:plinth";
pub const PAUSE: &str = "localhost/plinth/pause:1";

const TOOLS: &[&str] =
    &["containerd", "runc", "ctr", "umoci", "skopeo", "gcc", "ip", "iptables", "curl", "docker-registry"];

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Whether the kubelet tests can run here; under CI=true a missing piece is a failure.
pub fn available() -> bool {
    let mut missing: Vec<String> = TOOLS.iter().filter(|t| !which(t)).map(|t| t.to_string()).collect();
    for f in ["/bin/busybox", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap"] {
        if !Path::new(f).exists() {
            missing.push(f.to_string());
        }
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("kubelet tests need {missing:?} (run scripts/setup-debian.sh as root)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OCI archive of one image built with umoci from a root filesystem filled by `fill`.
fn build_image(work: &Path, name: &str, reference: &str, config: &[&str], fill: impl FnOnce(&Path)) -> PathBuf {
    let layout = work.join(format!("{name}-layout"));
    let bundle = work.join(format!("{name}-bundle"));
    let image = format!("{}:{name}", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    fill(&bundle.join("rootfs"));
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new("umoci").args(["config", "--image", &image]).args(config));
    let archive = work.join(format!("{name}.tar"));
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{image}"))
        .arg(format!("oci-archive:{}:{reference}", archive.display())));
    archive
}

const PAUSE_C: &str = r#"
#include <signal.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  for (;;) pause();
}
"#;

/// The busybox and pause image archives, built once per machine under the target directory.
pub fn images() -> &'static [PathBuf; 2] {
    static IMAGES: OnceLock<[PathBuf; 2]> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubelet-images-v1");
        let out = [dir.join("busybox.tar"), dir.join("pause.tar")];
        if out.iter().all(|p| p.is_file()) {
            return out;
        }
        let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let busybox = build_image(
            work.path(),
            "busybox",
            BUSYBOX,
            &["--config.cmd", "sh", "--config.env", "PATH=/bin"],
            |root| {
                let bin = root.join("bin");
                std::fs::create_dir_all(&bin).unwrap();
                std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
                let list = run(Command::new("/bin/busybox").arg("--list"));
                for applet in list.lines().filter(|a| *a != "busybox") {
                    std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
                }
                for d in ["tmp", "etc", "proc", "sys", "dev"] {
                    std::fs::create_dir_all(root.join(d)).unwrap();
                }
            },
        );
        let src = work.path().join("pause.c");
        std::fs::write(&src, PAUSE_C).unwrap();
        let bin = work.path().join("pause");
        run(Command::new("gcc").args(["-static", "-Os", "-o"]).arg(&bin).arg(&src));
        let pause = build_image(work.path(), "pause", PAUSE, &["--config.entrypoint", "/pause"], |root| {
            std::fs::copy(&bin, root.join("pause")).unwrap();
        });
        // Another test binary may have built them meanwhile: a rename onto an existing directory fails, harmlessly.
        let staged = work.path().join("out");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::rename(busybox, staged.join("busybox.tar")).unwrap();
        std::fs::rename(pause, staged.join("pause.tar")).unwrap();
        let _ = std::fs::rename(&staged, &dir);
        out
    })
}

/// A private containerd, stopped and cleaned up on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cni_dir: PathBuf,
    /// The CNI plugins containerd runs: links to Debian's, which a test may swap.
    pub cni_bin: PathBuf,
    pub bridge: String,
    pub pod_cidr: String,
    child: Child,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Containerd {
    /// A containerd with the pause and busybox images imported.
    pub fn start() -> Containerd {
        Containerd::start_with(true)
    }

    /// A containerd with the pause image, and busybox only if `busybox`.
    pub fn start_with(busybox: bool) -> Containerd {
        let images = if busybox { &images()[..] } else { &images()[1..] };
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let bridge = format!("plk{}x{n}", pid % 100_000);
        let pod_cidr = format!("10.{}.{}.0/24", 100 + pid % 100, (pid / 100 % 25) * 10 + n % 10);
        let dir = tempfile::Builder::new().prefix("plinth-ctd").tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let cni_dir = d.join("cni");
        std::fs::create_dir_all(&cni_dir).unwrap();
        let cni_bin = d.join("cni-bin");
        std::fs::create_dir_all(&cni_bin).unwrap();
        for plugin in std::fs::read_dir(DEBIAN_CNI).unwrap() {
            let plugin = plugin.unwrap();
            std::os::unix::fs::symlink(plugin.path(), cni_bin.join(plugin.file_name())).unwrap();
        }
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{cni}"
"#,
            d = d.display(),
            bin = cni_bin.display(),
            cni = cni_dir.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let child = spawn_containerd(d, &socket);
        let c = Containerd { dir, socket, cni_dir, cni_bin, bridge, pod_cidr, child };
        for archive in images {
            c.ctr(&["images", "import", archive.to_str().unwrap()]);
        }
        c
    }

    /// Kills containerd (SIGKILL: the shims, and so the containers, live on).
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::fs::remove_file(&self.socket).unwrap();
    }

    /// Starts containerd again on the same root, state and socket.
    pub fn restart(&mut self) {
        self.child = spawn_containerd(self.dir.path(), &self.socket);
    }

    /// Replaces the CNI `plugin` with a shell script `body` (the CNI
    /// environment and stdin are the script's), or with Debian's again when `None`.
    pub fn swap_cni_plugin(&self, plugin: &str, body: Option<&str>) {
        let staged = self.cni_bin.join(format!(".{plugin}.new"));
        match body {
            Some(body) => {
                std::fs::write(&staged, format!("#!/bin/sh\n{body}\n")).unwrap();
                std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            }
            None => std::os::unix::fs::symlink(Path::new(DEBIAN_CNI).join(plugin), &staged).unwrap(),
        }
        std::fs::rename(&staged, self.cni_bin.join(plugin)).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        run(Command::new("ctr").arg("--address").arg(&self.socket).args(["--namespace", "k8s.io"]).args(args))
    }

    /// The CRI pod sandboxes, as (id, pod uid, ready).
    pub fn sandboxes(&self) -> Vec<(String, String, bool)> {
        let socket = self.socket.clone();
        rt().block_on(async move {
            let cri = orchestrator_kubelet::cri::Cri::connect(&socket, Duration::from_secs(5)).await.unwrap();
            let items = cri
                .runtime
                .clone()
                .list_pod_sandbox(orchestrator_kubelet::cri::v1::ListPodSandboxRequest { filter: None })
                .await
                .unwrap()
                .into_inner()
                .items;
            items
                .into_iter()
                .map(|s| {
                    let uid = s.metadata.map(|m| m.uid).unwrap_or_default();
                    (s.id, uid, s.state == orchestrator_kubelet::cri::v1::PodSandboxState::SandboxReady as i32)
                })
                .collect()
        })
    }

    /// Network namespaces containerd holds (under its state directory).
    pub fn netns_count(&self) -> usize {
        let dir = self.dir.path().join("state/io.containerd.grpc.v1.cri/netns");
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    fn remove_all_sandboxes(&self) {
        let socket = self.socket.clone();
        rt().block_on(async move {
            let Ok(cri) = orchestrator_kubelet::cri::Cri::connect(&socket, Duration::from_secs(2)).await else {
                return;
            };
            let mut rs = cri.runtime.clone();
            let Ok(list) =
                rs.list_pod_sandbox(orchestrator_kubelet::cri::v1::ListPodSandboxRequest { filter: None }).await
            else {
                return;
            };
            for s in list.into_inner().items {
                let _ = rs
                    .stop_pod_sandbox(orchestrator_kubelet::cri::v1::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await;
                let _ = rs
                    .remove_pod_sandbox(orchestrator_kubelet::cri::v1::RemovePodSandboxRequest { pod_sandbox_id: s.id })
                    .await;
            }
        });
    }
}

/// Where Debian's containernetworking-plugins are.
const DEBIAN_CNI: &str = "/usr/lib/cni";

/// Starts containerd with the config in `dir`, its log appended to `dir`/containerd.log;
/// returns once its socket exists.
fn spawn_containerd(dir: &Path, socket: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log")).unwrap();
    let mut child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
            panic!("containerd did not start: {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Processes whose command line mentions `needle` (the shims of this containerd).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() as i32 {
            out.push(pid);
        }
    }
    out
}

/// Unmounts what is left mounted under `dir` (rootfs, shm, netns, tmpfs volumes), deepest first.
fn unmount_under(dir: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> =
        mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The nat POSTROUTING rules the CNI bridge plugin made for this test's network.
pub fn nat_rules(bridge: &str) -> String {
    let out = Command::new("iptables").args(["-t", "nat", "-S", "POSTROUTING"]).output().unwrap();
    let net = format!("plinth-{bridge}\\\"");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&net)).collect::<Vec<_>>().join("\n")
}

/// Removes masquerade rules of this network a torn-down sandbox left behind
/// (containerd aborts a CNI DEL whose caller went away, as a killed kubelet does).
fn remove_nat_rules(bridge: &str) {
    let net = format!("plinth-{bridge}\"");
    loop {
        let out =
            Command::new("iptables").args(["-t", "nat", "-L", "POSTROUTING", "-n", "--line-numbers"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some(line) = text.lines().find(|l| l.contains(&net)) else { return };
        let mut f = line.split_whitespace();
        let (num, chain) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        let deleted =
            Command::new("iptables").args(["-t", "nat", "-D", "POSTROUTING", num]).status().is_ok_and(|s| s.success());
        if chain.starts_with("CNI-") {
            let _ = Command::new("iptables").args(["-t", "nat", "-F", chain]).status();
            let _ = Command::new("iptables").args(["-t", "nat", "-X", chain]).status();
        }
        if !deleted {
            return;
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_sandboxes();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_mentioning(&dir) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        unmount_under(&dir);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        remove_nat_rules(&self.bridge);
    }
}

/// The control plane with the kubelet in one process, over a private containerd.
pub struct Cluster {
    // Dropped first: the pods go before their volumes' directory.
    pub containerd: Containerd,
    pub kubectl: PathBuf,
    pub data: tempfile::TempDir,
    pub node: String,
    server: Option<Child>,
    manifests: AtomicU32,
    extra_args: Vec<String>,
    /// The server's `--listen`.
    listen: &'static str,
    /// Control plane and kubelet as two processes (a worker node).
    split: bool,
    /// More `orchestrator server` flags (split clusters).
    server_args: Vec<String>,
    /// The kubelet takes its pod range from its Node (no `--pod-cidr`).
    ipam: bool,
    kubelet: Option<Child>,
    /// The server's URL, once started.
    pub url: String,
    /// The server's (and kubelet's) `PLINTH_LOG` filter.
    log: String,
}

impl Cluster {
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(true, &[])
    }

    /// `orchestrator server` and `orchestrator kubelet --server` as two processes (a worker node).
    pub fn start_split() -> Option<Cluster> {
        Cluster::start_split_with(&[])
    }

    /// A split cluster whose `orchestrator server` gets `server_args` too.
    pub fn start_split_with(server_args: &[&str]) -> Option<Cluster> {
        let mut c = Cluster::start_with_processes(true, &[], true)?;
        c.server_args = server_args.iter().map(|a| a.to_string()).collect();
        c.start_server();
        c.wait_node_ready();
        Some(c)
    }

    /// A cluster whose server hands out pod ranges (`--cluster-cidr`,
    /// containerd's range cut into /26s) and whose kubelet (a worker's when
    /// `split`, else the control plane's own) takes its own from its
    /// Node's `spec.podCIDR`.
    pub fn start_ipam(split: bool) -> Option<Cluster> {
        let mut c = Cluster::start_with_processes(true, &[], split)?;
        let flags =
            vec!["--cluster-cidr".into(), c.containerd.pod_cidr.clone(), "--node-cidr-mask-size".into(), "26".into()];
        if split {
            c.server_args = flags;
        } else {
            c.extra_args = flags;
        }
        c.ipam = true;
        c.start_server();
        c.wait_node_ready();
        Some(c)
    }

    /// `busybox`: whether containerd has the busybox image before the kubelet starts; `args`: more server flags.
    /// Returns once the Node is Ready.
    pub fn start_with(busybox: bool, args: &[&str]) -> Option<Cluster> {
        let mut c = Cluster::start_with_processes(busybox, args, false)?;
        c.start_server();
        c.wait_node_ready();
        Some(c)
    }

    /// A cluster whose API server listens on every address and names the
    /// pod network's gateway in its certificate, so that the `kubernetes`
    /// Service (10.96.0.1:443) leads pods to it.
    pub fn start_reachable_from_pods() -> Option<Cluster> {
        let mut c = Cluster::start_with_processes(true, &[], false)?;
        let gateway = c.containerd.pod_cidr.replace(".0/24", ".1");
        c.extra_args.extend(["--cert-san".to_string(), gateway]);
        c.listen = "0.0.0.0:0";
        c.start_server();
        c.wait_node_ready();
        Some(c)
    }

    /// A cluster whose processes log with the `PLINTH_LOG` filter `log`
    /// (e.g. the kubelet's per-pod step timings for the benchmark).
    pub fn start_logging(log: &str) -> Option<Cluster> {
        let mut c = Cluster::start_with_processes(true, &[], false)?;
        c.log = log.to_string();
        c.start_server();
        c.wait_node_ready();
        Some(c)
    }

    /// Waits for the kubelet's Node to be Ready: every test starts there.
    fn wait_node_ready(&self) {
        self.wait_for(&["get", "node", &self.node], Duration::from_secs(60), |s| s.contains(" Ready "));
    }

    fn start_with_processes(busybox: bool, args: &[&str], split: bool) -> Option<Cluster> {
        if !available() {
            return None;
        }
        let kubectl = super::common::kubectl()?;
        let containerd = Containerd::start_with(busybox);
        let data = tempfile::Builder::new().prefix("plinth-kubelet").tempdir().unwrap();
        let extra_args = args.iter().map(|a| a.to_string()).collect();
        Some(Cluster {
            kubectl,
            data,
            node: "node-1".into(),
            server: None,
            containerd,
            manifests: AtomicU32::new(0),
            extra_args,
            listen: "127.0.0.1:0",
            split,
            server_args: Vec::new(),
            ipam: false,
            kubelet: None,
            url: String::new(),
            log: "orchestrator=info".into(),
        })
    }

    pub fn kubelet_dir(&self) -> PathBuf {
        self.data.path().join("kubelet")
    }

    /// Starts (or restarts) `orchestrator server --kubelet` on the same data directory; in a split
    /// cluster, `orchestrator server` and a worker's `orchestrator kubelet --server` (two processes).
    pub fn start_server(&mut self) {
        let log =
            || std::fs::OpenOptions::new().create(true).append(true).open(self.data.path().join("server.log")).unwrap();
        let first_line = |child: &mut Child| {
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            line
        };
        let ctd = &self.containerd;
        let node_args = |c: &mut Command| {
            c.args(["--node-name", &self.node])
                .arg("--kubelet-dir")
                .arg(self.data.path().join("kubelet"))
                .arg("--cri-socket")
                .arg(&ctd.socket)
                .arg("--cni-conf-dir")
                .arg(&ctd.cni_dir)
                .args(if self.ipam { vec![] } else { vec!["--pod-cidr", &ctd.pod_cidr] })
                .args(["--cni-bridge", &ctd.bridge])
                .args(["--node-ip", "127.0.0.1", "--kubelet-listen", "127.0.0.1:0"])
                .args(&self.extra_args)
                .env("PLINTH_LOG", &self.log)
                .stdout(Stdio::piped())
                .stderr(log());
        };
        let mut server = self.server_command(self.listen);
        if !self.split {
            server.arg("--kubelet");
            node_args(&mut server);
        }
        let mut child = server.spawn().unwrap();
        let line = first_line(&mut child);
        assert!(line.contains("listening on"), "the server did not start: {line:?} {}", self.server_log());
        self.server = Some(child);
        let url = line.split_whitespace().find(|w| w.starts_with("https://")).expect("the server's URL");
        self.url = url.to_string();
        if self.split {
            let mut kubelet = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
            // As init starts a worker: the endpoint, a bootstrap token and
            // the CA's pin; the kubelet joins (or reuses its certificate).
            let (token, pin) = create_token(&self.data.path().join("admin.kubeconfig"), "1h");
            let token_file = self.data.path().join("bootstrap-token");
            std::fs::write(&token_file, token).unwrap();
            kubelet.args(["kubelet", "--server", url, "--ca-cert-hash", &pin]).arg("--token-file").arg(&token_file);
            node_args(&mut kubelet);
            let mut child = kubelet.spawn().unwrap();
            let line = first_line(&mut child);
            assert!(line.contains("running"), "the kubelet did not start: {line:?} {}", self.server_log());
            self.kubelet = Some(child);
        }
    }

    /// `orchestrator server` on `listen` (stdout piped, stderr to server.log); split clusters add their flags.
    fn server_command(&self, listen: &str) -> Command {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.path().join("server.log"));
        let mut server = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        server.args(["server", "--listen", listen, "--fsync", "false"]).arg("--data-dir").arg(self.data.path());
        server.stdout(Stdio::piped()).stderr(log.unwrap());
        if self.split {
            server.args(&self.server_args);
        }
        server
    }

    /// Kills `orchestrator server` of a split cluster: the control plane
    /// goes away, the worker's kubelet stays.
    pub fn stop_control_plane(&mut self) {
        assert!(self.split, "a split cluster");
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `orchestrator server` of a split cluster again, on the address it had.
    pub fn start_control_plane(&mut self) {
        let listen = self.url.trim_start_matches("https://").trim_end_matches('/').to_string();
        let mut child = self.server_command(&listen).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "the server did not start again: {line:?} {}", self.server_log());
        self.server = Some(child);
    }

    /// `orchestrator kubelet`'s pid (split clusters).
    pub fn kubelet_pid(&self) -> u32 {
        self.kubelet.as_ref().map_or(0, Child::id)
    }

    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().map_or(0, Child::id)
    }

    /// Kills the process(es) (as a crash would): the containers keep running in their shims.
    pub fn kill_server(&mut self) {
        for mut c in [self.kubelet.take(), self.server.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", self.data.path().join("admin.kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    }

    /// kubectl started with its standard input and output as pipes, for a
    /// session the test holds open while it does something else.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", self.data.path().join("admin.kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// kubectl with `input` on its standard input (then closed).
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", self.data.path().join("admin.kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out
    }

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

    pub fn apply(&self, yaml: &str) -> String {
        let n = self.manifests.fetch_add(1, Ordering::Relaxed);
        let f = self.data.path().join(format!("manifest-{n}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        self.ok(&["apply", "-f", f.to_str().unwrap()])
    }

    /// Polls kubectl until stdout satisfies `pred`; on time-out panics with the server's log tail.
    pub fn wait_for(&self, args: &[&str], timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let out = self.run(args);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && pred(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                let log = self.server_log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "timed out waiting on kubectl {args:?}; last output:\n{s}{}\nserver log (newest first):\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The reasons of the events about a pod, oldest first.
    pub fn event_reasons(&self, pod: &str) -> String {
        let path = format!("jsonpath={{range .items[?(@.involvedObject.name==\"{pod}\")]}}{{.reason}} {{end}}");
        self.ok(&["get", "events", "--sort-by=.metadata.creationTimestamp", "-o", &path])
    }

    /// kubectl as the worker's kubelet (its client certificate; split clusters).
    pub fn run_as_node(&self, args: &[&str]) -> Output {
        let admin = std::fs::read_to_string(self.data.path().join("admin.kubeconfig")).unwrap();
        let server = admin.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("the server's URL");
        Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", node_kubeconfig(server, &self.kubelet_dir()))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    }

    /// A pod's field by JSONPath.
    pub fn pod_field(&self, name: &str, path: &str) -> String {
        self.ok(&["get", "pod", name, "-o", &format!("jsonpath={{{path}}}")])
    }
}

pub const REGISTRY_USER: &str = "alice";
pub const REGISTRY_PASSWORD: &str = "s3cret";
/// bcrypt of REGISTRY_PASSWORD (cost 5), the only hash docker-registry's htpasswd accepts.
const REGISTRY_PASSWORD_BCRYPT: &str = "$2b$05$plinthplinthplinthplieAF3ohfCMO5/LNV9b393bm4leP63EUzK";

/// Debian's docker-registry on a free 127.0.0.1 port (plain HTTP), killed on drop.
pub struct Registry {
    pub address: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(false)
    }

    /// A registry that requires basic authentication as `REGISTRY_USER`/`REGISTRY_PASSWORD` (htpasswd).
    pub fn start_with_auth() -> Registry {
        Registry::start_with(true)
    }

    fn start_with(auth: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.path().join("data").display()
        );
        if auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{REGISTRY_USER}:{REGISTRY_PASSWORD_BCRYPT}\n")).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: plinth\n    path: {}\n", htpasswd.display()));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { address, child, _dir: dir }
    }

    /// Pushes the busybox image as `<address>/<name>` (with the test credentials); returns that reference.
    pub fn push_busybox(&self, name: &str) -> String {
        let reference = format!("{}/{name}", self.address);
        let creds = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
        run(Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
            .arg(format!("oci-archive:{}", images()[0].display()))
            .arg(format!("docker://{reference}")));
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_server();
        let chains = orchestrator_node_net::proxy::Chains::new(&self.containerd.bridge);
        if let Err(e) = rt().block_on(orchestrator_node_net::routes::cleanup(&chains)) {
            eprintln!("remove the pod routes' rules: {e}");
        }
        if let Err(e) = rt().block_on(orchestrator_node_net::proxy::cleanup(&chains)) {
            eprintln!("remove the service proxy's rules: {e}");
        }
        if let Err(e) = rt().block_on(orchestrator_node_net::masquerade::cleanup(&chains)) {
            eprintln!("remove the pod masquerade: {e}");
        }
        self.containerd.remove_all_sandboxes();
        unmount_under(&self.data.path().to_string_lossy());
    }
}

/// A kubeconfig for `server` with a joined kubelet's certificate (the
/// `pki/` files of its directory `dir`), written there.
pub fn node_kubeconfig(server: &str, dir: &Path) -> PathBuf {
    use base64::Engine as _;
    let b64 =
        |p: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("pki").join(p)).unwrap());
    let both = b64("kubelet-client-current.pem");
    let path = dir.join("node.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
             users:\n- name: u\n  user:\n    client-certificate-data: {both}\n    client-key-data: {both}\n\
             contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            b64("ca.crt")
        ),
    )
    .unwrap();
    path
}

/// `orchestrator token create`: a new bootstrap token and the CA pin.
pub fn create_token(admin_kubeconfig: &Path, ttl: &str) -> (String, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["token", "--kubeconfig"])
        .arg(admin_kubeconfig)
        .args(["create", "--ttl", ttl]));
    let mut lines = out.lines();
    let token = lines.next().expect("a token").to_string();
    let pin = lines.next().and_then(|l| l.strip_prefix("--ca-cert-hash ")).expect("the CA pin").to_string();
    (token, pin)
}
