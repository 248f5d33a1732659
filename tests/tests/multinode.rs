//! Three nodes in QEMU on one guest-to-guest network: a control plane and
//! two workers booted from the same image, each with DHCP on eth0 (QEMU's
//! user network, apid and the API forwarded to 127.0.0.1) and a static
//! address on eth1 (a multicast socket netdev shared by all). One test
//! function boots the guests once and checks, in order (each step printed
//! as `multinode step: …`): the workers join by token with no CA key; three
//! Nodes Ready with distinct pod CIDRs and their eth1 addresses as
//! InternalIP; a 3-replica Deployment lands one pod per node; a pod on a
//! worker reaches pods on the other nodes by pod IP (unmasqueraded),
//! through a Service's cluster IP and DNS name, and its node port on every
//! node's address; with the control plane stopped, the workers' pods keep
//! answering across nodes for over a minute, and once it is back no
//! worker pod was restarted (same container IDs and restart counts).
//! Figures (`figure: NAME VALUE` lines, collected by `bench/cluster.sh`):
//! config applied → worker Ready, worker RSS, pod round trips, time offline.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use machinery::config::MachineConfig;
use plinth_qemu::{ClusterNet, Vm, VmOptions};
use plinth_tests::cluster::{BOOT, ROLLOUT, busybox_image_options, tail};
use plinth_tests::{Operator, kubectl, osctl, wait_for};

const TOKEN: &str = "abcdef.0123456789abcdef";
/// The nodes' addresses on the cluster network: cp, w1, w2.
const ADDRS: [&str; 3] = ["10.5.0.1", "10.5.0.2", "10.5.0.3"];

/// A web server pinned to the control plane behind a Service with a
/// cluster IP, a DNS name and a node port; a Deployment of three web
/// servers (spread one per node by the scheduler's default); a client pod
/// on the first worker.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: server
  labels: {app: server}
spec:
  nodeName: cp
  containers:
  - name: web
    image: docker.io/library/busybox:plinth
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /tmp/www/cgi-bin; echo hello from the control plane > /tmp/www/index.html; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"$REMOTE_ADDR\"\\n' > /tmp/www/cgi-bin/ip; chmod +x /tmp/www/cgi-bin/ip; exec httpd -f -p 8080 -h /tmp/www"]
    ports:
    - containerPort: 8080
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: server
spec:
  type: NodePort
  selector: {app: server}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
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
        command: ["sh", "-c", "mkdir -p /tmp/www; hostname > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"]
        ports:
        - containerPort: 8080
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 2
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: w1
  containers:
  - name: client
    image: docker.io/library/busybox:plinth
    imagePullPolicy: IfNotPresent
    command: ["sleep", "86400"]
"#;

/// `osctl gen config` for one node of the cluster.
fn gen_config(op: &Operator, out: &Path, extra: &[&str]) -> anyhow::Result<MachineConfig> {
    let secrets = op.dir.path().to_str().context("utf-8")?;
    let mut args = vec!["gen", "config", "--cluster", "demo", "--token", TOKEN, "--secrets", secrets];
    args.extend_from_slice(extra);
    args.extend(["--cert-san", "127.0.0.1", "--out", out.to_str().context("utf-8")?]);
    osctl(&op.osctlconfig(), &args).ok()?;
    Ok(MachineConfig::parse(&out.display().to_string(), &std::fs::read_to_string(out)?)?)
}

/// Powers on a VM on `net` and applies `config` in maintenance mode; returns
/// it and when the config was applied.
fn power_on(op: &Operator, image: &Path, dir: &Path, name: &str, net: ClusterNet, config: &Path) -> anyhow::Result<Vm> {
    let opts = VmOptions { image: image.to_path_buf(), name: name.into(), memory_mib: 512, dir: dir.join(name) };
    let mut vm = Vm::start_on(opts, net)?;
    vm.wait_for_api(BOOT)?;
    let cfg = config.to_str().context("utf-8")?;
    // Booted in maintenance mode (DHCP on every interface), the node takes
    // its static eth1 address at the next boot: apply with a reboot.
    osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "--insecure", "apply-config", "--mode", "reboot", "-f", cfg])
        .ok()?;
    Ok(vm)
}

/// Waits for a node rebooted into its config to serve mutual TLS with it.
fn wait_configured(op: &Operator, vm: &mut Vm) -> anyhow::Result<()> {
    let addr = vm.api_addr();
    wait_for(&format!("{} to serve its config", vm.name), Duration::from_secs(180), || {
        vm.supervise().ok()?;
        let v = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "version"]).json().ok()?;
        (v[0]["mode"] == "configured").then_some(())
    })
    .with_context(|| tail(&vm.serial_log()))
}

/// `kubectl exec POD -- CMD…`'s output once it succeeds (within a minute:
/// the proxy's rules and the routes follow the API by a moment).
fn exec_ok(kubeconfig: &Path, pod: &str, cmd: &[&str], what: &str) -> anyhow::Result<String> {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let mut last = String::new();
    wait_for(what, Duration::from_secs(90), || match kubectl(kubeconfig, &args) {
        Ok(r) if r.code == 0 => Some(r.stdout),
        Ok(r) => {
            last = format!("exit {}: {}{}", r.code, r.stdout, r.stderr);
            None
        }
        Err(e) => {
            last = e.to_string();
            None
        }
    })
    .with_context(|| format!("last attempt: {last}"))
}

/// The average of busybox ping's summary (`round-trip min/avg/max = a/b/c ms`).
fn ping_avg_ms(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=').nth(1)?.trim().split('/').nth(1)?.trim().parse().ok()
}

/// Each pod's node and, per container, (ID, restartCount): what must not
/// change while the control plane is away and after it returns.
fn containers(kubeconfig: &Path) -> anyhow::Result<Vec<(String, String, String, i64)>> {
    let pods = kubectl(kubeconfig, &["get", "pods", "-o", "json"])?.ok()?.json()?;
    let mut out = Vec::new();
    for p in pods["items"].as_array().context("items")? {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
        for c in p["status"]["containerStatuses"].as_array().into_iter().flatten() {
            let id = c["containerID"].as_str().unwrap_or_default();
            out.push((node.to_string(), name.to_string(), id.to_string(), c["restartCount"].as_i64().unwrap_or(-1)));
        }
    }
    out.sort();
    Ok(out)
}

/// What a failed cross-node step needs to be understood: each node's
/// addresses, routes, forwarding and reverse-path settings and nat rules
/// (from a privileged hostNetwork pod chrooted into the node), and its
/// orchestrator's log lines about routes and the proxy.
fn diagnose(op: &Operator, kubeconfig: &Path, dir: &Path, vms: &[&Vm]) -> String {
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

fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("figure: {name} {value}");
}

fn step(text: &str) {
    eprintln!("multinode step: {text}");
}

#[test]
fn a_control_plane_and_two_workers_serve_across_nodes_and_ride_out_the_control_plane_going_away() -> anyhow::Result<()>
{
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (_, opts) = busybox_image_options(&op, w)?;
    image_builder::build(&opts)?;
    let image = opts.out.clone();

    step("configs: a control plane and two workers joining by token");
    let cp_toml = w.join("cp.toml");
    let cp_cfg = gen_config(
        &op,
        &cp_toml,
        &["--role", "controlplane", "--hostname", "cp", "--cluster-address", &format!("{}/24", ADDRS[0])],
    )?;
    let endpoint = format!("https://{}:6443", ADDRS[0]);
    assert_eq!(cp_cfg.kube_endpoint().as_deref(), Some(endpoint.as_str()));
    let mut worker_tomls = Vec::new();
    for (i, name) in ["w1", "w2"].iter().enumerate() {
        let toml = w.join(format!("{name}.toml"));
        let cfg = gen_config(
            &op,
            &toml,
            &[
                "--role",
                "worker",
                "--hostname",
                name,
                "--cluster-address",
                &format!("{}/24", ADDRS[i + 1]),
                "--endpoint",
                &endpoint,
            ],
        )?;
        // A worker joins by token: no CA key of either kind in its config.
        assert!(cfg.cluster.ca_key.is_none() && cfg.api.ca_key.is_none());
        let text = std::fs::read_to_string(&toml)?;
        for ca_key in ["ca.key", "kube-ca.key"] {
            let key = std::fs::read_to_string(op.path(ca_key))?;
            assert!(!text.contains(key.trim()), "{ca_key} is in {name}'s config");
        }
        assert_eq!(cfg.cluster.token.as_deref(), Some(TOKEN));
        worker_tomls.push(toml);
    }

    step("booting the control plane");
    let net = ClusterNet::new()?;
    let mut cp = power_on(&op, &image, w, "cp", net, &cp_toml)?;
    wait_configured(&op, &mut cp)?;
    let kubeconfig = w.join("kubeconfig");
    let kc = kubeconfig.to_str().context("utf-8")?.to_string();
    let cp_api = cp.api_addr();
    wait_for("the kubeconfig", BOOT, || {
        osctl(&op.osctlconfig(), &["-n", &cp_api, "kubeconfig", "--server", &cp.kube_url(), "--out", &kc]).ok().ok()
    })
    .with_context(|| tail(&cp.serial_log()))?;
    let ready = |node: &str| -> Option<()> {
        let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
        let r = kubectl(&kubeconfig, &["get", "node", node, "-o", jsonpath]).ok()?;
        (r.stdout == "True").then_some(())
    };
    wait_for("node cp Ready", BOOT, || ready("cp")).with_context(|| tail(&cp.serial_log()))?;

    step("booting two workers at once");
    let mut workers = Vec::new();
    for (name, toml) in ["w1", "w2"].iter().zip(&worker_tomls) {
        workers.push(power_on(&op, &image, w, name, net, toml)?);
    }
    let mut applied = Vec::new();
    for vm in &mut workers {
        wait_configured(&op, vm)?;
        applied.push(Instant::now());
    }
    let logs = |workers: &[Vm], cp: &Vm| {
        let mut s = String::new();
        for vm in workers {
            s += &format!("{}: {}\n", vm.name, tail(&vm.serial_log()));
        }
        s + &format!("control plane: {}", tail(&cp.serial_log()))
    };
    for (vm, at) in workers.iter().zip(&applied) {
        wait_for(&format!("node {} Ready", vm.name), BOOT, || ready(&vm.name)).with_context(|| logs(&workers, &cp))?;
        figure(&format!("{}_configured_to_ready_s", vm.name), format!("{:.1}", at.elapsed().as_secs_f64()));
    }

    step("three Nodes Ready, distinct pod CIDRs, their cluster-network addresses as InternalIP");
    let nodes = kubectl(&kubeconfig, &["get", "nodes", "-o", "json"])?.ok()?.json()?;
    let mut seen = Vec::new();
    for n in nodes["items"].as_array().context("items")? {
        let name = n["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let cidr = n["spec"]["podCIDR"].as_str().unwrap_or_default().to_string();
        let internal = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or_default()
            .to_string();
        seen.push((name, cidr, internal));
    }
    seen.sort();
    let names: Vec<(&str, &str)> = seen.iter().map(|(n, _, ip)| (n.as_str(), ip.as_str())).collect();
    assert_eq!(names, [("cp", ADDRS[0]), ("w1", ADDRS[1]), ("w2", ADDRS[2])], "{seen:?}");
    let cidrs: std::collections::BTreeSet<&str> = seen.iter().map(|s| s.1.as_str()).filter(|c| !c.is_empty()).collect();
    assert_eq!(cidrs.len(), 3, "distinct pod CIDRs: {seen:?}");

    step("a pod on each node; the Deployment's three replicas one per node");
    let manifest = w.join("pods.yaml");
    std::fs::write(&manifest, PODS)?;
    kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    for pod in ["pod/server", "pod/client"] {
        kubectl(&kubeconfig, &["wait", "--for=condition=Ready", pod, ROLLOUT])?
            .ok()
            .with_context(|| format!("{pod}: {}", logs(&workers, &cp)))?;
    }
    kubectl(&kubeconfig, &["rollout", "status", "deployment/web", ROLLOUT])?
        .ok()
        .with_context(|| logs(&workers, &cp))?;
    let web = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            r#"jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP}{"\n"}{end}"#,
        ],
    )?
    .ok()?
    .stdout;
    let mut web: Vec<(String, String)> =
        web.lines().filter_map(|l| l.split_once(' ')).map(|(n, ip)| (n.to_string(), ip.to_string())).collect();
    web.sort();
    let web_nodes: Vec<&str> = web.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(web_nodes, ["cp", "w1", "w2"], "one replica per node: {web:?}");
    let web_ip = |node: &str| web.iter().find(|(n, _)| n == node).map(|(_, ip)| ip.clone()).expect("a pod per node");
    let pod_ip = |pod: &str| -> anyhow::Result<String> {
        Ok(kubectl(&kubeconfig, &["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?.ok()?.stdout)
    };
    let (server_ip, client_ip) = (pod_ip("server")?, pod_ip("client")?);
    let cluster_ip =
        kubectl(&kubeconfig, &["get", "service", "server", "-o", "jsonpath={.spec.clusterIP}"])?.ok()?.stdout;

    let fetch =
        |url: &str, what: &str| exec_ok(&kubeconfig, "client", &["wget", "-q", "-O", "-", "-T", "5", url], what);
    let across = || -> anyhow::Result<()> {
        step("the worker's pod reaches the control plane's by pod IP, with its own address as the source");
        let seen_from = fetch(&format!("http://{server_ip}:8080/cgi-bin/ip"), "client (w1) → server (cp) by pod IP")?;
        anyhow::ensure!(seen_from.trim() == client_ip, "pod-to-pod across nodes is masqueraded: {seen_from}");
        step("… and the other worker's pod by pod IP");
        let page = fetch(&format!("http://{}:8080/", web_ip("w2")), "client (w1) → web (w2) by pod IP")?;
        anyhow::ensure!(page.starts_with("web-"), "w2's web pod answered {page:?}");
        step("… through the Service's cluster IP and by its DNS name");
        let page = fetch(&format!("http://{cluster_ip}/"), "client (w1) → server by cluster IP")?;
        anyhow::ensure!(page.trim() == "hello from the control plane", "by cluster IP: {page:?}");
        let page = fetch("http://server.default.svc.cluster.local/", "client (w1) → server by DNS name")?;
        anyhow::ensure!(page.trim() == "hello from the control plane", "by DNS name: {page:?}");
        step("the node port answers on every node's address");
        for addr in ADDRS {
            let page = fetch(&format!("http://{addr}:30080/"), &format!("node port 30080 on {addr}"))?;
            anyhow::ensure!(page.trim() == "hello from the control plane", "node port on {addr}: {page:?}");
        }
        Ok(())
    };
    if let Err(e) = across() {
        let all: Vec<&Vm> = std::iter::once(&cp).chain(&workers).collect();
        return Err(e.context(diagnose(&op, &kubeconfig, w, &all)));
    }

    step("figures: pod-to-pod round trip within a node and across nodes; worker memory");
    for (what, ip) in [("within_node", web_ip("w1")), ("across_nodes", web_ip("w2"))] {
        match kubectl(&kubeconfig, &["exec", "client", "--", "ping", "-q", "-c", "5", &ip]) {
            Ok(r) => match ping_avg_ms(&r.stdout) {
                Some(ms) => figure(&format!("pod_rtt_{what}_ms"), ms),
                None => eprintln!("no ping figure ({what}): {}{}", r.stdout, r.stderr),
            },
            Err(e) => eprintln!("no ping figure ({what}): {e}"),
        }
    }
    for vm in &workers {
        let services = osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "-o", "json", "services"]).json()?;
        for (name, kib) in plinth_tests::footprint::service_rss(&services)? {
            figure(&format!("{}_rss_{name}_kib", vm.name), kib);
        }
    }

    step("the control plane goes away: the workers' pods keep running and answering");
    let probe = format!(
        "while true; do if wget -q -O /dev/null -T 2 http://{}:8080/; then echo ok $(date +%s); else echo fail $(date +%s); fi; sleep 2; done",
        web_ip("w2")
    );
    let prober = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: prober}}\nspec:\n  nodeName: w1\n  containers:\n  - name: prober\n    image: docker.io/library/busybox:plinth\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", {}]\n",
        serde_json::to_string(&probe)?
    );
    let prober_yaml = w.join("prober.yaml");
    std::fs::write(&prober_yaml, prober)?;
    kubectl(&kubeconfig, &["apply", "-f", prober_yaml.to_str().context("utf-8")?])?.ok()?;
    kubectl(&kubeconfig, &["wait", "--for=condition=Ready", "pod/prober", ROLLOUT])?.ok()?;
    let on_workers = |all: Vec<(String, String, String, i64)>| -> Vec<(String, String, String, i64)> {
        all.into_iter().filter(|c| c.0 != "cp").collect()
    };
    let before = on_workers(containers(&kubeconfig)?);
    assert_eq!(before.len(), 4, "client, prober and two web pods on the workers: {before:?}");
    assert!(before.iter().all(|c| !c.2.is_empty() && c.3 >= 0), "{before:?}");
    let epoch = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // The prober stamps its lines with the worker's clock: measure its offset.
    let guest_now = kubectl(&kubeconfig, &["exec", "prober", "--", "date", "+%s"])?.ok()?.stdout;
    let skew = guest_now.trim().parse::<i64>().context("the worker's clock")? - epoch() as i64;
    let stopped_at = (epoch() as i64 + skew) as u64;
    let offline = Instant::now();
    cp.stop(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(75));
    for vm in &mut workers {
        vm.supervise().with_context(|| format!("{} while the control plane was away", vm.name))?;
        let services = osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "services"]).ok()?;
        assert!(services.stdout.contains("orchestrator"), "{}: {}", vm.name, services.stdout);
    }
    let restarted_at = (epoch() as i64 + skew) as u64;
    figure("workers_offline_s", offline.elapsed().as_secs());

    step("the control plane is back: the cluster reconciles and no worker pod restarted");
    cp.boot()?;
    wait_for("the Kubernetes API again", BOOT, || kubectl(&kubeconfig, &["get", "--raw", "/readyz"]).ok()?.ok().ok())
        .with_context(|| tail(&cp.serial_log()))?;
    for node in ["cp", "w1", "w2"] {
        wait_for(&format!("node {node} Ready again"), BOOT, || ready(node)).with_context(|| logs(&workers, &cp))?;
    }
    let log = kubectl(&kubeconfig, &["logs", "prober"])?.ok()?.stdout;
    // The guests' clocks follow the host's (RTC); a few seconds' margin.
    let window: Vec<(&str, u64)> = log
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(r, t)| Some((r, t.trim().parse::<u64>().ok()?)))
        .filter(|(_, t)| *t >= stopped_at + 5 && *t + 5 <= restarted_at)
        .collect();
    assert!(window.iter().all(|(r, _)| *r == "ok"), "the worker's pod answered throughout: {window:?}");
    let span = window.last().map(|l| l.1).unwrap_or(0) - window.first().map(|l| l.1).unwrap_or(0);
    assert!(span >= 60, "answers seen over {span} s while the control plane was away (want ≥ 60): {log}");
    let mut after = Vec::new();
    wait_for("the workers' pod statuses", BOOT, || {
        after = on_workers(containers(&kubeconfig).ok()?);
        (after == before).then_some(())
    })
    .with_context(|| format!("no pod restarted by the reconnection:\nbefore {before:?}\nafter  {after:?}"))?;
    for pod in ["pod/client", "pod/prober"] {
        kubectl(&kubeconfig, &["wait", "--for=condition=Ready", pod, ROLLOUT])?.ok()?;
    }
    kubectl(&kubeconfig, &["rollout", "status", "deployment/web", ROLLOUT])?
        .ok()
        .with_context(|| logs(&workers, &cp))?;
    Ok(())
}
