//! Benchmark (not a test): three nodes in QEMU (TCG) on one cluster
//! network, a control plane and two workers joining by token, and one
//! worker powered off and on again. Prints the figures as `figure: NAME
//! VALUE` lines: power-on → control plane Ready, each worker's config
//! applied → Ready (both joining at once), then, with a 3-replica
//! Deployment spread over the nodes, w2 powered off (QEMU killed, no
//! shutdown) → its Node not Ready → its pod replaced on the other nodes
//! (Ready again with 3 replicas) and w2 powered on → Ready again → its
//! old pod gone. Before the power-off, with the Deployment up: the round
//! trip and HTTP throughput from a pod on w1 to a pod on the same node,
//! to one on w2 and to w2 itself, and the control plane's and w1's memory
//! (guest RAM, each process' RSS). `PLINTH_TEST_POD_NETWORK=vxlan` (or
//! `host-gw`) sets every node's `cluster.pod_network`. The Deployment's pods tolerate the unreachable taint for
//! `PLINTH_CLUSTER_TOLERATION_S` seconds (default 30; upstream's default,
//! which pods without their own get, is 300). Run with `bench/cluster.sh`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_qemu::{ClusterNet, Vm};
use plinth_tests::cluster::{BOOT, ROLLOUT, build_busybox_image, tail};
use plinth_tests::multinode::{apply, cluster_configs, node_ready, power_on, wait_configured};
use plinth_tests::{Operator, footprint, kubectl, osctl, wait_for};

fn figure(name: &str, value: f64) {
    println!("figure: {name} {value:.2}");
}

/// The size of the file fetched for the throughput figures.
const BIG_MIB: u32 = 16;

/// A pod that stays on `node`, for the network figures.
fn probe(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probe}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 0
  containers:
  - name: probe
    image: docker.io/library/busybox:plinth
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
"#
    )
}

/// `sh -c SCRIPT` in `pod`: what it printed.
fn exec(kubeconfig: &Path, pod: &str, script: &str) -> anyhow::Result<String> {
    Ok(kubectl(kubeconfig, &["exec", pod, "--", "sh", "-c", script])?.ok()?.stdout)
}

/// The average of ten pings from `pod` to `ip`, in ms (busybox's
/// `round-trip min/avg/max = …` line).
fn rtt_ms(kubeconfig: &Path, pod: &str, ip: &str) -> anyhow::Result<f64> {
    let out = exec(kubeconfig, pod, &format!("ping -q -c 10 {ip}"))?;
    let line = out.lines().find(|l| l.contains("min/avg/max")).with_context(|| format!("ping {ip}: {out}"))?;
    let avg = line.split('=').nth(1).and_then(|v| v.trim().split('/').nth(1));
    avg.and_then(|a| a.parse().ok()).with_context(|| format!("ping {ip}: no average in {line:?}"))
}

/// MB/s of fetching [`BIG_MIB`] MiB over HTTP from `ip` in `pod`, timed
/// by the guest's own clock (`/proc/uptime`, 10 ms steps).
fn throughput_mb_s(kubeconfig: &Path, pod: &str, ip: &str) -> anyhow::Result<f64> {
    let script = format!(
        "read a _ </proc/uptime; wget -q -O /dev/null http://{ip}:8080/big || exit 1; read b _ </proc/uptime; echo $a $b"
    );
    let out = exec(kubeconfig, pod, &script)?;
    let t: Vec<f64> = out.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let [a, b] = t[..] else { anyhow::bail!("fetching from {ip}: no two uptimes in {out:?}") };
    if b - a < 0.05 {
        anyhow::bail!("fetching {BIG_MIB} MiB from {ip} took {:.2} s: too short to time with /proc/uptime", b - a);
    }
    Ok(f64::from(BIG_MIB) * 1.048576 / (b - a))
}

/// Round trip and throughput from a pod on w1 to a pod on the same node
/// and to one on w2 (and to w2 itself, the network under the pods).
fn network_figures(kubeconfig: &Path, dir: &Path, pods: &[(String, String, bool, bool)]) -> anyhow::Result<()> {
    let manifest = dir.join("probe.yaml");
    std::fs::write(&manifest, probe("w1"))?;
    kubectl(kubeconfig, &["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    kubectl(kubeconfig, &["wait", "--for=condition=Ready", "pod/probe", "--timeout=300s"])?.ok()?;
    let on = |node: &str| -> anyhow::Result<(String, String)> {
        let pod = pods.iter().find(|p| p.1 == node).with_context(|| format!("no web pod on {node}: {pods:?}"))?;
        let ip = kubectl(kubeconfig, &["get", "pod", &pod.0, "-o", "jsonpath={.status.podIP}"])?.ok()?.stdout;
        exec(kubeconfig, &pod.0, &format!("dd if=/dev/zero of=/tmp/www/big bs=1M count={BIG_MIB} 2>/dev/null"))?;
        Ok((pod.0.clone(), ip))
    };
    let (near, far) = (on("w1")?, on("w2")?);
    let internal = r#"jsonpath={.status.addresses[?(@.type=="InternalIP")].address}"#;
    let w2 = kubectl(kubeconfig, &["get", "node", "w2", "-o", internal])?.ok()?.stdout;
    let mtu = exec(kubeconfig, "probe", "cat /sys/class/net/eth0/mtu")?;
    println!("the probe pod's eth0 MTU: {}", mtu.trim());
    figure("pod_rtt_same_node_ms", rtt_ms(kubeconfig, "probe", &near.1)?);
    figure("pod_rtt_across_nodes_ms", rtt_ms(kubeconfig, "probe", &far.1)?);
    figure("pod_to_other_node_rtt_ms", rtt_ms(kubeconfig, "probe", &w2)?);
    figure("pod_http_same_node_mb_s", throughput_mb_s(kubeconfig, "probe", &near.1)?);
    figure("pod_http_across_nodes_mb_s", throughput_mb_s(kubeconfig, "probe", &far.1)?);
    kubectl(kubeconfig, &["delete", "pod", "probe", "--wait=false"])?.ok()?;
    Ok(())
}

/// A node's memory (its `osctl version` and `services`).
fn print_footprint(op: &Operator, vm: &Vm, when: &str) -> anyhow::Result<()> {
    let addr = vm.api_addr();
    let at = |args: &[&str]| {
        let mut all = vec!["-n", addr.as_str(), "-o", "json"];
        all.extend_from_slice(args);
        osctl(&op.osctlconfig(), &all).ok()?.json()
    };
    footprint::print(when, &at(&["version"])?, &at(&["services"])?)
}

fn web(toleration_s: u64) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: {toleration_s}}}
      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: {toleration_s}}}
      containers:
      - name: web
        image: docker.io/library/busybox:plinth
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /tmp/www; hostname > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 2
"#
    )
}

/// The web pods as (name, node, ready, being deleted).
fn web_pods(kubeconfig: &Path) -> anyhow::Result<Vec<(String, String, bool, bool)>> {
    let pods = kubectl(kubeconfig, &["get", "pods", "-l", "app=web", "-o", "json"])?.ok()?.json()?;
    let mut out = Vec::new();
    for p in pods["items"].as_array().context("items")? {
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        out.push((
            p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
            ready,
            !p["metadata"]["deletionTimestamp"].is_null(),
        ));
    }
    out.sort();
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let toleration_s: u64 =
        std::env::var("PLINTH_CLUSTER_TOLERATION_S").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = build_busybox_image(&op, w)?;
    let network = std::env::var("PLINTH_TEST_POD_NETWORK").unwrap_or_else(|_| "auto".into());
    println!("cluster.pod_network = {network}");

    let names = ["cp", "w1", "w2"];
    let tomls: Vec<PathBuf> = cluster_configs(&op, w, &names)?.into_iter().map(|(toml, _)| toml).collect();

    let net = ClusterNet::new()?;
    let powered_on = Instant::now();
    let mut vms: Vec<Vm> = Vec::new();
    for name in names {
        vms.push(power_on(&image, w, name, net)?);
    }
    apply(&op, &mut vms[0], &tomls[0])?;
    wait_configured(&op, &mut vms[0])?;
    let kubeconfig = w.join("kubeconfig");
    let kc = kubeconfig.to_str().context("utf-8")?.to_string();
    let (cp_api, cp_url) = (vms[0].api_addr(), vms[0].kube_url());
    wait_for("the kubeconfig", BOOT, || {
        osctl(&op.osctlconfig(), &["-n", &cp_api, "kubeconfig", "--server", &cp_url, "--out", &kc]).ok().ok()
    })
    .with_context(|| tail(&vms[0].serial_log()))?;
    wait_for("node cp Ready", BOOT, || node_ready(&kubeconfig, "cp")).with_context(|| tail(&vms[0].serial_log()))?;
    figure("cp_power_on_to_ready_s", powered_on.elapsed().as_secs_f64());

    // Both workers join at once.
    let applied = Instant::now();
    for i in [1, 2] {
        apply(&op, &mut vms[i], &tomls[i])?;
    }
    for i in [1, 2] {
        wait_configured(&op, &mut vms[i])?;
    }
    let mut joined = [false, false];
    wait_for("both workers Ready", BOOT, || {
        for (j, name) in ["w1", "w2"].iter().enumerate() {
            if !joined[j] && node_ready(&kubeconfig, name).is_some() {
                joined[j] = true;
                figure(&format!("{name}_config_applied_to_ready_s"), applied.elapsed().as_secs_f64());
            }
        }
        (joined == [true, true]).then_some(())
    })
    .with_context(|| format!("w1: {}\nw2: {}", tail(&vms[1].serial_log()), tail(&vms[2].serial_log())))?;

    let manifest = w.join("web.yaml");
    std::fs::write(&manifest, web(toleration_s))?;
    kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    kubectl(&kubeconfig, &["rollout", "status", "deployment/web", ROLLOUT])?.ok()?;
    let before = web_pods(&kubeconfig)?;
    println!("web pods before: {before:?}");
    network_figures(&kubeconfig, w, &before)?;
    // Start-up work settled: the figures are the steady state.
    std::thread::sleep(Duration::from_secs(15));
    print_footprint(&op, &vms[0], "cp (control plane and kubelet, one web pod)")?;
    print_footprint(&op, &vms[1], "w1 (worker, one web pod)")?;
    let Some(on_w2) = before.iter().find(|p| p.1 == "w2").map(|p| p.0.clone()) else {
        anyhow::bail!("no web pod on w2 to fail over: {before:?}");
    };

    // Pull w2's plug.
    let off = Instant::now();
    vms[2].kill();
    wait_for("node w2 not Ready", Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_millis(500));
        node_ready(&kubeconfig, "w2").is_none().then_some(())
    })?;
    figure("w2_power_off_to_not_ready_s", off.elapsed().as_secs_f64());
    let mut now = Vec::new();
    wait_for("3 web pods Ready off w2", Duration::from_secs(300 + toleration_s), || {
        std::thread::sleep(Duration::from_millis(500));
        now = web_pods(&kubeconfig).ok()?;
        let serving = now.iter().filter(|p| p.1 != "w2" && p.2 && !p.3).count();
        (serving == 3).then_some(())
    })
    .with_context(|| format!("web pods: {now:?}"))?;
    figure("w2_power_off_to_pods_replaced_s", off.elapsed().as_secs_f64());
    println!("web pods with w2 off: {now:?}");

    // And back on.
    let on = Instant::now();
    vms[2].boot()?;
    wait_for("node w2 Ready again", BOOT, || {
        std::thread::sleep(Duration::from_millis(500));
        node_ready(&kubeconfig, "w2")
    })
    .with_context(|| tail(&vms[2].serial_log()))?;
    figure("w2_power_on_to_ready_s", on.elapsed().as_secs_f64());
    let gone = wait_for("w2's old web pod gone", Duration::from_secs(180), || {
        std::thread::sleep(Duration::from_millis(500));
        (!web_pods(&kubeconfig).ok()?.iter().any(|p| p.0 == on_w2)).then_some(())
    });
    if let Err(e) = gone {
        // What the returning node's kubelet made of the pod deleted while it was off.
        let pod = kubectl(&kubeconfig, &["get", "pod", &on_w2, "-o", "yaml"]).map(|r| r.stdout + &r.stderr);
        let log = osctl(&op.osctlconfig(), &["-n", &vms[2].api_addr(), "logs", "orchestrator"]).stdout;
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains(&on_w2) || l.contains("WARN") || l.contains("ERROR")).collect();
        for vm in &mut vms {
            vm.stop(Duration::from_secs(10));
        }
        return Err(e.context(format!(
            "{pod:?}\n--- w2's orchestrator log (the pod, warnings, errors) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )));
    }
    figure("w2_power_on_to_old_pod_gone_s", on.elapsed().as_secs_f64());
    let after = web_pods(&kubeconfig)?;
    println!("web pods after: {after:?}");
    for vm in &mut vms {
        vm.stop(Duration::from_secs(10));
    }
    Ok(())
}
