//! Several nodes in QEMU on one guest-to-guest network (`ClusterNet`),
//! configured as a user does it: `osctl gen config` with a bootstrap token,
//! `apply-config` in maintenance mode, a reboot into the config. Shared by
//! `tests/multinode.rs` (three nodes, in CI: issue 15's proof) and
//! `benches/cluster.rs` (three nodes, a worker powered off and on).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use machinery::config::MachineConfig;
use plinth_qemu::{ClusterNet, Vm, VmOptions};

use crate::cluster::{BOOT, tail};
use crate::{Operator, kubectl, osctl, wait_for};

/// The bootstrap token the workers join with.
pub const TOKEN: &str = "abcdef.0123456789abcdef";
/// Node `i`'s address on the cluster network (the control plane is 0).
pub fn cluster_addr(i: usize) -> String {
    format!("10.5.0.{}", i + 1)
}

/// `osctl gen config` for one node of the cluster.
pub fn gen_config(op: &Operator, out: &Path, extra: &[&str]) -> anyhow::Result<MachineConfig> {
    let secrets = op.dir.path().to_str().context("utf-8")?;
    let mut args = vec!["gen", "config", "--cluster", "demo", "--token", TOKEN, "--secrets", secrets];
    args.extend_from_slice(extra);
    args.extend(["--cert-san", "127.0.0.1", "--out", out.to_str().context("utf-8")?]);
    osctl(&op.osctlconfig(), &args).ok()?;
    let mut text = std::fs::read_to_string(out)?;
    // PLINTH_TEST_POD_NETWORK=vxlan (or host-gw): every node's
    // `cluster.pod_network` (default `auto`, direct routes on this one LAN).
    if let Ok(mode) = std::env::var("PLINTH_TEST_POD_NETWORK") {
        text = text.replacen("[cluster]\n", &format!("[cluster]\npod_network = {mode:?}\n"), 1);
        std::fs::write(out, &text)?;
    }
    Ok(MachineConfig::parse(&out.display().to_string(), &text)?)
}

/// The configs of a cluster on the cluster network: `names[0]` the
/// control plane, the others workers joining it by token, each at
/// [`cluster_addr`] of its place; each file with its parsed config.
pub fn cluster_configs(op: &Operator, dir: &Path, names: &[&str]) -> anyhow::Result<Vec<(PathBuf, MachineConfig)>> {
    let endpoint = format!("https://{}:6443", cluster_addr(0));
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let toml = dir.join(format!("{name}.toml"));
        let addr = format!("{}/24", cluster_addr(i));
        let mut args = vec!["--hostname", name, "--cluster-address", &addr];
        if i == 0 {
            args.extend(["--role", "controlplane"]);
        } else {
            args.extend(["--role", "worker", "--endpoint", &endpoint]);
        }
        let cfg = gen_config(op, &toml, &args)?;
        out.push((toml, cfg));
    }
    Ok(out)
}

/// Powers on a VM on `net` (it boots into maintenance mode).
pub fn power_on(image: &Path, dir: &Path, name: &str, net: ClusterNet) -> anyhow::Result<Vm> {
    let opts = VmOptions { image: image.to_path_buf(), name: name.into(), memory_mib: 512, dir: dir.join(name) };
    Ok(Vm::start_on(opts, net)?)
}

/// Applies `config` to a VM in maintenance mode, with a reboot: booted in
/// maintenance mode (DHCP on every interface), the node takes its static
/// eth1 address at the next boot.
pub fn apply(op: &Operator, vm: &mut Vm, config: &Path) -> anyhow::Result<()> {
    if let Err(e) = vm.wait_for_api(BOOT) {
        // A guest that never started PID 1 stalled in the firmware or the
        // kernel under emulation (four TCG guests on two cores): powered
        // on once more, loudly. One that reached Plinth's init is failed.
        if vm.serial_log().contains("Run /init") {
            return Err(e.into());
        }
        eprintln!("{}: never reached PID 1 ({e}); powering it on again", vm.name);
        vm.kill();
        vm.boot()?;
        vm.wait_for_api(BOOT)?;
    }
    let cfg = config.to_str().context("utf-8")?;
    osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "--insecure", "apply-config", "--mode", "reboot", "-f", cfg])
        .ok()?;
    Ok(())
}

/// Waits for a node rebooted into its config to serve mutual TLS with it.
pub fn wait_configured(op: &Operator, vm: &mut Vm) -> anyhow::Result<()> {
    let addr = vm.api_addr();
    wait_for(&format!("{} to serve its config", vm.name), Duration::from_secs(180), || {
        vm.supervise().ok()?;
        let v = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "version"]).json().ok()?;
        (v[0]["mode"] == "configured").then_some(())
    })
    .with_context(|| tail(&vm.serial_log()))
}

/// `kubectl exec POD -- CMD…`'s output once it succeeds, tried every 2 s
/// for 90 s (the routes and the proxy's rules follow the API by a moment).
pub fn exec_ok(kubeconfig: &Path, pod: &str, cmd: &[&str], what: &str) -> anyhow::Result<String> {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let mut last = String::new();
    let mut tries = 0u32;
    wait_for(what, Duration::from_secs(90), || {
        if tries > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        tries += 1;
        match kubectl(kubeconfig, &args) {
            Ok(r) if r.code == 0 => Some(r.stdout),
            Ok(r) => {
                last = format!("exit {}: {}{}", r.code, r.stdout, r.stderr);
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        }
    })
    .with_context(|| format!("{what}: {tries} attempts, the last: {last}"))
}

/// An HTTP GET from inside `pod` with busybox's wget, cut off after 10 s
/// by busybox's `timeout` (wget's own `-T` crashed in a pod: exit 139).
pub fn fetch(kubeconfig: &Path, pod: &str, url: &str, what: &str) -> anyhow::Result<String> {
    let out = exec_ok(kubeconfig, pod, &["timeout", "10", "wget", "-q", "-O", "-", url], what)?;
    Ok(out.trim().to_string())
}

/// What a failed cross-node step needs to be understood: each node's
/// addresses, routes, neighbours, forwarding, reverse-path and
/// bridge-netfilter settings and nat rules (from a privileged hostNetwork
/// pod chrooted into the node), and its orchestrator's log lines about
/// routes, the proxy, warnings and errors.
pub fn diagnose(op: &Operator, kubeconfig: &Path, dir: &Path, vms: &[&Vm]) -> String {
    let script = "ip -4 addr; ip -4 route; ip neigh; echo forward $(cat /proc/sys/net/ipv4/ip_forward); \
        for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo $f $(cat $f); done; \
        echo bridge-nf $(cat /proc/sys/net/bridge/bridge-nf-call-iptables); \
        chroot /host /usr/sbin/iptables-save; chroot /host /usr/sbin/iptables -L FORWARD -n -v; sleep 3600";
    let mut out = String::new();
    for vm in vms {
        let name = format!("diag-{}", vm.name);
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  hostNetwork: true\n  containers:\n  - name: diag\n    image: docker.io/library/busybox:plinth\n    imagePullPolicy: IfNotPresent\n    securityContext: {{privileged: true}}\n    command: [\"sh\", \"-c\", {}]\n    volumeMounts: [{{name: host, mountPath: /host}}]\n  volumes: [{{name: host, hostPath: {{path: /}}}}]\n",
            vm.name,
            serde_json::to_string(script).unwrap_or_default()
        );
        let file = dir.join(format!("{name}.yaml"));
        let _ = std::fs::write(&file, yaml);
        let _ = kubectl(kubeconfig, &["apply", "-f", &file.to_string_lossy()]);
    }
    for vm in vms {
        let name = format!("diag-{}", vm.name);
        let _ = kubectl(kubeconfig, &["wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=120s"]);
        std::thread::sleep(Duration::from_secs(3));
        let logs =
            kubectl(kubeconfig, &["logs", &name]).map(|r| r.stdout + &r.stderr).unwrap_or_else(|e| e.to_string());
        let orch = osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "logs", "orchestrator"]);
        let lines: Vec<&str> = orch
            .stdout
            .lines()
            .filter(|l| l.contains("pod routes") || l.contains("proxy") || l.contains("WARN") || l.contains("ERROR"))
            .collect();
        out += &format!(
            "=== {} ===\n{logs}\n--- orchestrator log (routes, proxy, warnings) ---\n{}\n",
            vm.name,
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    out
}

/// Whether Node `node` is Ready, by `kubeconfig`.
pub fn node_ready(kubeconfig: &Path, node: &str) -> Option<()> {
    let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    let r = kubectl(kubeconfig, &["get", "node", node, "-o", jsonpath]).ok()?;
    (r.stdout == "True").then_some(())
}

/// A bare pod on `node` that fetches `url` every second (each try cut off
/// after 5 s by busybox's `timeout`) and prints `probe SEQ UNIXTIME ok` or
/// `… fail` per try: read back with [`probe_log`] once the API answers,
/// its lines cover any time the control plane was away.
pub fn prober_pod(name: &str, node: &str, url: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: probe}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: docker.io/library/busybox:plinth
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "n=0; while true; do n=$((n+1)); if timeout 5 wget -q -O /dev/null {url}; then r=ok; else r=fail; fi; echo \"probe $n $(date +%s) $r\"; sleep 1; done"]
"#
    )
}

/// One line of a [`prober_pod`]'s log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub seq: u64,
    /// Seconds since the epoch, by the node's clock.
    pub time: i64,
    pub ok: bool,
}

/// A [`prober_pod`]'s probes so far, in order.
pub fn probe_log(kubeconfig: &Path, pod: &str) -> anyhow::Result<Vec<Probe>> {
    let out = kubectl(kubeconfig, &["logs", pod])?.ok()?.stdout;
    let mut probes = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            ["probe", seq, time, r] => {
                seq.parse().ok().zip(time.parse().ok()).map(|(seq, time)| Probe { seq, time, ok: *r == "ok" })
            }
            _ => None,
        };
        probes.push(parsed.with_context(|| format!("{pod}: not a probe line: {line:?}"))?);
    }
    Ok(probes)
}
