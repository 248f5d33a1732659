//! A single-node cluster in QEMU driven as a user drives it: osctl for the
//! node, kubectl for the workloads. Shared by the whole-journey test and
//! its benchmark.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_qemu::{Throttle, Vm, VmOptions};

use crate::{Operator, kubectl, osctl, wait_for};

/// How long a boot, or the API after one, may take under TCG.
pub const BOOT: Duration = Duration::from_secs(300);
/// Pods under TCG: sandbox, container and probes take seconds each.
pub const ROLLOUT: &str = "--timeout=600s";

/// A Deployment of two busybox web servers (from the preloaded archive,
/// no registry) reading a ConfigMap, and a Service in front of them.
pub const WEB: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello from a configmap
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: docker.io/library/busybox:plinth
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "echo \"serving: $(cat /config/greeting)\"; mkdir -p /tmp/www; cp /config/greeting /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"]
        ports:
        - containerPort: 8080
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 2
        volumeMounts:
        - {name: config, mountPath: /config}
      volumes:
      - name: config
        configMap: {name: web-config}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080}
"#;

/// Guest memory (MiB) of the whole-journey test and its benchmark:
/// `PLINTH_JOURNEY_MEMORY_MIB`, default 512 (`bench/journey.sh --min-memory` lowers it).
pub fn journey_memory_mib() -> u32 {
    std::env::var("PLINTH_JOURNEY_MEMORY_MIB").ok().and_then(|m| m.parse().ok()).unwrap_or(512)
}

/// The bench board (`PLINTH_BENCH_BOARD`, default `qemu-x86_64`) and the
/// build options of its image at `dir/plinth.img` with busybox preloaded.
pub fn busybox_image_options(op: &Operator, dir: &Path) -> anyhow::Result<(String, image_builder::BuildOptions)> {
    let board = std::env::var("PLINTH_BENCH_BOARD").unwrap_or_else(|_| "qemu-x86_64".into());
    let mut opts = crate::build_options_for(op, &dir.join("plinth.img"), machinery::VERSION, &board)?;
    let arch = image_builder::load_board(&board, &opts.board_dir)?.arch;
    opts.preload_images = vec![crate::busybox_archive(dir, arch)?];
    Ok((board, opts))
}

/// Builds [`busybox_image_options`]'s image and returns its path.
pub fn build_busybox_image(op: &Operator, dir: &Path) -> anyhow::Result<PathBuf> {
    let (_, opts) = busybox_image_options(op, dir)?;
    image_builder::build(&opts)?;
    Ok(opts.out)
}

/// The end of a serial log, for failure messages.
pub fn tail(log: &str) -> String {
    format!("serial console, last lines:\n{}", plinth_qemu::last_lines(log, 60))
}

/// A configured control-plane node in QEMU, with its kubeconfig.
pub struct ClusterNode {
    pub vm: Vm,
    pub addr: String,
    pub osctlconfig: PathBuf,
    pub kubeconfig: PathBuf,
    pub hostname: String,
    /// When QEMU was started.
    pub powered_on: Instant,
    /// How long from power-on to apid answering (maintenance mode).
    pub to_api: Duration,
    /// How long from power-on to the Node Ready.
    pub to_ready: Duration,
}

impl ClusterNode {
    /// Boots `image`, applies a signed DHCP config for `hostname` with
    /// osctl, fetches the kubeconfig with osctl and waits for the Node Ready.
    pub fn boot(op: &Operator, image: PathBuf, dir: &Path, hostname: &str, memory_mib: u32) -> anyhow::Result<Self> {
        ClusterNode::boot_throttled(op, image, dir, hostname, memory_mib, None)
    }

    /// [`ClusterNode::boot`] on a disk as slow as `throttle` (an SD card's).
    pub fn boot_throttled(
        op: &Operator,
        image: PathBuf,
        dir: &Path,
        hostname: &str,
        memory_mib: u32,
        throttle: Option<Throttle>,
    ) -> anyhow::Result<Self> {
        let powered_on = Instant::now();
        let opts = VmOptions { image, name: hostname.into(), memory_mib, dir: dir.join("vm") };
        let mut vm = match throttle {
            Some(t) => Vm::start_throttled(opts, t)?,
            None => Vm::start(opts)?,
        };
        vm.wait_for_api(BOOT)?;
        let to_api = powered_on.elapsed();
        let addr = vm.api_addr();
        let osctlconfig = op.osctlconfig();
        let cfg = op.gen_dhcp_config(&format!("{hostname}.toml"), hostname)?;
        osctl(&osctlconfig, &["-n", &addr, "--insecure", "apply-config", "-f", cfg.to_str().context("utf-8")?]).ok()?;
        let kubeconfig = dir.join("kubeconfig");
        let mut node = ClusterNode {
            vm,
            addr,
            osctlconfig,
            kubeconfig,
            hostname: hostname.into(),
            powered_on,
            to_api,
            to_ready: Duration::ZERO,
        };
        wait_for("mutual TLS with the config", Duration::from_secs(60), || {
            node.version().filter(|v| v[0]["mode"] == "configured")
        })?;
        let kc = node.kubeconfig.to_str().context("utf-8")?.to_string();
        wait_for("the kubeconfig", BOOT, || {
            node.osctl(&["kubeconfig", "--server", &node.vm.kube_url(), "--out", &kc]).ok().ok()
        })
        .with_context(|| tail(&node.vm.serial_log()))?;
        node.wait_api("the first boot")?;
        let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
        wait_for(&format!("node {hostname} Ready"), BOOT, || {
            let r = node.kubectl(&["get", "node", hostname, "-o", ready]).ok()?;
            (r.stdout == "True").then_some(())
        })
        .with_context(|| tail(&node.vm.serial_log()))?;
        node.to_ready = powered_on.elapsed();
        Ok(node)
    }

    pub fn osctl(&self, args: &[&str]) -> crate::Run {
        let mut all = vec!["-n", self.addr.as_str()];
        all.extend_from_slice(args);
        osctl(&self.osctlconfig, &all)
    }

    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<crate::Run> {
        kubectl(&self.kubeconfig, args)
    }

    /// `osctl version` as JSON, when the node answers. Every wait for a
    /// reboot polls this: it also lets the harness boot a Pi-layout VM
    /// again after its guest rebooted ([`Vm::supervise`]).
    pub fn version(&mut self) -> Option<serde_json::Value> {
        self.vm.supervise().ok()?;
        self.osctl(&["-o", "json", "version"]).json().ok()
    }

    /// Waits for the Kubernetes API to answer (after a boot).
    pub fn wait_api(&self, what: &str) -> anyhow::Result<()> {
        wait_for(&format!("the Kubernetes API ({what})"), BOOT, || {
            self.kubectl(&["get", "--raw", "/readyz"]).ok()?.ok().ok()
        })
        .with_context(|| tail(&self.vm.serial_log()))?;
        Ok(())
    }

    /// Applies [`WEB`] and waits for its rollout.
    pub fn deploy_web(&self, dir: &Path) -> anyhow::Result<()> {
        let manifest = dir.join("web.yaml");
        std::fs::write(&manifest, WEB)?;
        self.kubectl(&["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
        self.wait_web("the first rollout")
    }

    /// Waits for the API, then for the web Deployment to be rolled out.
    pub fn wait_web(&self, what: &str) -> anyhow::Result<()> {
        self.wait_api(what)?;
        self.kubectl(&["rollout", "status", "deployment/web", ROLLOUT])?
            .ok()
            .with_context(|| format!("{what}: {}", tail(&self.vm.serial_log())))?;
        Ok(())
    }

    /// The web Deployment's pods as (name, IP), sorted.
    pub fn web_pods(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = self
            .kubectl(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}"#,
            ])?
            .ok()?;
        let mut v: Vec<(String, String)> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(n, ip)| (n.to_string(), ip.to_string())))
            .collect();
        v.sort();
        Ok(v)
    }
}
