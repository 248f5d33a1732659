//! Issue 15's proof in QEMU: a control plane and two workers booted from
//! the same image on one guest-to-guest network, each with DHCP on eth0
//! (QEMU's user network, apid and the API forwarded to 127.0.0.1) and a
//! static address on eth1 (a multicast socket netdev shared by all). One
//! test function boots the guests once and checks, in order (each step
//! printed as `multinode step (T s): …`):
//! - the workers join by token with no CA key in their configs; the three
//!   Nodes are Ready with distinct pod CIDRs and their eth1 addresses as
//!   InternalIP; a 3-replica Deployment lands one pod per node;
//! - across nodes: a pod reaches the next node's pod by pod IP with its
//!   own address as the source (not masqueraded), w1 → w2 → cp → w1; the
//!   Service's cluster IP answers from a pod on each node with all three
//!   pods (a hairpin included); the workers' cluster DNS resolves the
//!   Service's name and the name answers; the node port answers on every
//!   node's address;
//! - offline: with a prober pod on each worker fetching the other worker's
//!   pod by pod IP every second, the control plane is powered off (QEMU
//!   killed) for at least 60 s; every probe made meanwhile answers, then it
//!   is powered on again and the cluster reconciles with no worker pod
//!   restarted (same UIDs and container IDs, restartCount 0);
//! - upgrade: w1 is upgraded with `osctl upgrade` (cordoned and drained
//!   under a PodDisruptionBudget of minAvailable 2, its pods evicted to the
//!   other nodes, the new slot committed, uncordoned) while a prober on the
//!   control plane fetches the Service every second and the host watches
//!   the Deployment's available replicas;
//! - `osctl reset` of w2 deletes its Node, and its certificate requests go
//!   with it.
//!
//! A failed cross-node step comes with each node's addresses, routes,
//! sysctls and nat rules and its orchestrator's route and proxy log lines.
//! The Node-failure scenario (a worker powered off, its pod replaced) is
//! `bench/cluster.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_qemu::ClusterNet;
use plinth_tests::cluster::{BOOT, ROLLOUT, build_busybox_image, busybox_image_options, tail};
use plinth_tests::multinode::{
    TOKEN, apply, cluster_addr, cluster_configs, diagnose, exec_ok, fetch, node_ready, power_on, probe_log, prober_pod,
    wait_configured,
};
use plinth_tests::{Operator, bundle_with, kubectl, osctl, slot, wait_for};

const NODES: [&str; 3] = ["cp", "w1", "w2"];
/// The version of the upgrade bundle w1 gets.
const NEXT: &str = "0.2.0";
/// Probes of the control plane's prober allowed to fail while w1 is
/// drained and upgraded. The evicted pod leaves the Service's endpoints
/// when its deletion starts, and it serves on for its grace period (its
/// httpd, PID 1, ignores SIGTERM: 10 s until SIGKILL), so no probe should
/// fail; one is allowed for a probe in flight to the evicted pod at the
/// moment the proxy's rules change (a new connection is what each probe
/// makes, so no more than one can be caught).
const UPGRADE_FAILURES_ALLOWED: usize = 1;

/// The Deployment: three web servers answering their pod's name at `/`
/// and, at `/cgi-bin/ip`, the address their request came from; a NodePort
/// Service in front of them and a PodDisruptionBudget keeping two.
const WEB: &str = r#"apiVersion: apps/v1
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
      terminationGracePeriodSeconds: 10
      containers:
      - name: web
        image: docker.io/library/busybox:plinth
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /tmp/www/cgi-bin; hostname > /tmp/www/index.html; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"$REMOTE_ADDR\"\\n' > /tmp/www/cgi-bin/ip; chmod +x /tmp/www/cgi-bin/ip; exec httpd -f -p 8080 -h /tmp/www"]
        ports:
        - containerPort: 8080
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 2
  selector:
    matchLabels: {app: web}
"#;

/// Prints a step with the time since the test began.
fn step(text: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("multinode step ({t} s): {text}");
}

/// A pod as the reconciliation check compares it: UID, container ID,
/// restart count.
fn identity(kubeconfig: &std::path::Path, pod: &str) -> anyhow::Result<(String, String, i64)> {
    let p = kubectl(kubeconfig, &["get", "pod", pod, "-o", "json"])?.ok()?.json()?;
    let c = &p["status"]["containerStatuses"][0];
    Ok((
        p["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
        c["containerID"].as_str().unwrap_or_default().to_string(),
        c["restartCount"].as_i64().unwrap_or(-1),
    ))
}

#[test]
fn three_nodes_join_by_token_serve_across_nodes_run_on_without_the_control_plane_and_upgrade_a_worker_drained()
-> anyhow::Result<()> {
    step("building the image and the upgrade bundle");
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = build_busybox_image(&op, w)?;
    // The bundle w1 is upgraded to: the same image (busybox preloaded), a
    // later version.
    let bundle = w.join(format!("plinth-{NEXT}.osb"));
    let (_, mut opts) = busybox_image_options(&op, w)?;
    (opts.out, opts.version) = (bundle.clone(), NEXT.to_string());
    bundle_with(&opts, &op)?;

    let endpoint = format!("https://{}:6443", cluster_addr(0));
    let mut tomls = Vec::new();
    for (i, (toml, cfg)) in cluster_configs(&op, w, &NODES)?.into_iter().enumerate() {
        let name = NODES[i];
        if i == 0 {
            assert_eq!(cfg.kube_endpoint().as_deref(), Some(&*endpoint));
        } else {
            // A worker joins by token: no CA key of either kind in its config.
            assert!(cfg.cluster.ca_key.is_none() && cfg.api.ca_key.is_none(), "{name}");
            let text = std::fs::read_to_string(&toml)?;
            for ca_key in ["ca.key", "kube-ca.key"] {
                let key = std::fs::read_to_string(op.path(ca_key))?;
                assert!(!text.contains(key.trim()), "{ca_key} is in {name}'s config");
            }
            assert_eq!(cfg.cluster.token.as_deref(), Some(TOKEN));
        }
        tomls.push(toml);
    }

    step("powering on the three VMs; the control plane's config first");
    let net = ClusterNet::new()?;
    let mut vms = Vec::new();
    for name in NODES {
        // The workers boot into maintenance mode meanwhile.
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

    step("the workers join by token");
    for i in [1, 2] {
        apply(&op, &mut vms[i], &tomls[i])?;
    }
    for i in [1, 2] {
        wait_configured(&op, &mut vms[i])?;
    }
    for i in [1, 2] {
        wait_for(&format!("node {} Ready", NODES[i]), BOOT, || node_ready(&kubeconfig, NODES[i])).with_context(
            || format!("{}: {}\ncontrol plane: {}", NODES[i], tail(&vms[i].serial_log()), tail(&vms[0].serial_log())),
        )?;
    }

    // Ready, distinct pod CIDRs, their cluster-network addresses as InternalIP.
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
    let want: Vec<(String, String)> = NODES.iter().enumerate().map(|(i, n)| (n.to_string(), cluster_addr(i))).collect();
    let got: Vec<(String, String)> = seen.iter().map(|s| (s.0.clone(), s.2.clone())).collect();
    assert_eq!(got, want, "{seen:?}");
    let cidrs: BTreeSet<&str> = seen.iter().map(|s| s.1.as_str()).filter(|c| !c.is_empty()).collect();
    assert_eq!(cidrs.len(), 3, "distinct pod CIDRs: {seen:?}");

    step("a 3-replica Deployment lands one pod per node");
    let manifest = w.join("web.yaml");
    std::fs::write(&manifest, WEB)?;
    kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    kubectl(&kubeconfig, &["rollout", "status", "deployment/web", ROLLOUT])?.ok().with_context(|| {
        let logs: Vec<String> = vms.iter().map(|vm| format!("{}: {}", vm.name, tail(&vm.serial_log()))).collect();
        logs.join("\n")
    })?;
    let listing = r#"jsonpath={range .items[*]}{.spec.nodeName} {.metadata.name} {.status.podIP}{"\n"}{end}"#;
    let out = kubectl(&kubeconfig, &["get", "pods", "-l", "app=web", "-o", listing])?.ok()?.stdout;
    // node → (pod, pod IP)
    let web: BTreeMap<String, (String, String)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].to_string(), (f[1].to_string(), f[2].to_string())))
        })
        .collect();
    assert_eq!(web.keys().map(String::as_str).collect::<Vec<_>>(), NODES, "one web pod per node: {out}");
    let pod = |node: &str| web[node].0.clone();
    let ip = |node: &str| web[node].1.clone();
    let get = |what: &str, jsonpath: &str| -> anyhow::Result<String> {
        Ok(kubectl(&kubeconfig, &["get", what, "-o", &format!("jsonpath={jsonpath}")])?.ok()?.stdout)
    };
    let svc = get("service/web", "{.spec.clusterIP}")?;
    let all_pods: BTreeSet<String> = NODES.iter().map(|n| pod(n)).collect();

    let across = || -> anyhow::Result<()> {
        // httpd listens on `::`, so an IPv4 peer reads as `[::ffff:a.b.c.d]`.
        let peer =
            |s: String| s.trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:").to_string();
        for (from, to) in [("w1", "w2"), ("w2", "cp"), ("cp", "w1")] {
            step(&format!("{from}'s pod reaches {to}'s by pod IP, its own address the source"));
            let url = format!("http://{}:8080/cgi-bin/ip", ip(to));
            let seen = peer(fetch(&kubeconfig, &pod(from), &url, &format!("{from} → {to} by pod IP"))?);
            anyhow::ensure!(
                seen == ip(from),
                "{from} → {to} by pod IP: it saw {seen}, not {} (masqueraded?)",
                ip(from)
            );
        }

        // 30 fetches each: the chance that the proxy's random choice
        // misses one of three pods is 3·(2/3)^30, about 1 in 70,000.
        let many = |url: &str| format!("for i in $(seq 30); do timeout 10 wget -q -O - {url} || exit 1; done");
        for node in NODES {
            step(&format!("the Service's cluster IP answers from {node}'s pod with all three pods"));
            let url = format!("http://{svc}/");
            let out = exec_ok(&kubeconfig, &pod(node), &["sh", "-c", &many(&url)], &format!("{node} → {url}"))?;
            let answered: BTreeSet<String> = out.lines().map(|l| l.trim().to_string()).collect();
            anyhow::ensure!(answered == all_pods, "{node} → {url}: answered by {answered:?}, not {all_pods:?}");
        }

        let name = "web.default.svc.cluster.local";
        for node in ["w1", "w2"] {
            step(&format!("{node}'s cluster DNS resolves the Service's name, and the name answers"));
            let found = exec_ok(&kubeconfig, &pod(node), &["nslookup", name], &format!("nslookup on {node}"))?;
            anyhow::ensure!(found.contains(&format!("Address: {svc}")), "nslookup {name} on {node}: {found}");
            let page = fetch(&kubeconfig, &pod(node), &format!("http://{name}/"), &format!("{node} → {name}"))?;
            anyhow::ensure!(all_pods.contains(&page), "{node} → {name}: {page:?}");
        }

        step("the node port answers on every node's address");
        for i in 0..NODES.len() {
            let url = format!("http://{}:30080/", cluster_addr(i));
            let page = fetch(&kubeconfig, &pod("w1"), &url, &format!("w1's pod → node port on {}", NODES[i]))?;
            anyhow::ensure!(all_pods.contains(&page), "{url}: {page:?}");
        }
        Ok(())
    };
    let all_vms: Vec<&plinth_qemu::Vm> = vms.iter().collect();
    if let Err(e) = across() {
        return Err(e.context(diagnose(&op, &kubeconfig, w, &all_vms)));
    }

    step("a prober on each worker fetches the other worker's pod by pod IP every second");
    let probers = [("probe-w1", "w1", "w2"), ("probe-w2", "w2", "w1")];
    for (name, node, target) in probers {
        let file = w.join(format!("{name}.yaml"));
        std::fs::write(&file, prober_pod(name, node, &format!("http://{}:8080/", ip(target))))?;
        kubectl(&kubeconfig, &["apply", "-f", file.to_str().context("utf-8")?])?.ok()?;
    }
    for (name, ..) in probers {
        kubectl(&kubeconfig, &["wait", "--for=condition=Ready", &format!("pod/{name}"), ROLLOUT])?.ok()?;
    }
    // Each prober's first answer, so the offline window starts from a working state.
    let mut before_off = BTreeMap::new();
    for (name, ..) in probers {
        let last = wait_for(&format!("{name}'s first answer"), Duration::from_secs(120), || {
            let log = probe_log(&kubeconfig, name).ok()?;
            log.iter().any(|p| p.ok).then(|| log.last().map(|p| p.seq)).flatten()
        })?;
        before_off.insert(name, last);
    }
    let worker_pods: Vec<String> =
        ["w1", "w2"].iter().map(|n| pod(n)).chain(probers.iter().map(|p| p.0.to_string())).collect();
    let mut identities = BTreeMap::new();
    for p in &worker_pods {
        identities.insert(p.clone(), identity(&kubeconfig, p)?);
    }

    // The workers' Leases as last renewed: a renewal after the outage shows
    // their kubelets back in touch.
    let lease = |node: &str| -> anyhow::Result<String> {
        let args = ["-n", "kube-node-lease", "get", "lease", node, "-o", "jsonpath={.spec.renewTime}"];
        Ok(kubectl(&kubeconfig, &args)?.ok()?.stdout)
    };
    let renewed_before = [lease("w1")?, lease("w2")?];

    step("the control plane powered off (QEMU killed): the workers' pods run on and answer");
    let off = Instant::now();
    vms[0].kill();
    // The workers' own API (apid) still answers, and their pods run on.
    for vm in &vms[1..] {
        osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "version"]).ok()?;
    }
    assert!(kubectl(&kubeconfig, &["get", "--raw", "/readyz", "--request-timeout=5s"])?.code != 0);
    std::thread::sleep(Duration::from_secs(60).saturating_sub(off.elapsed()));
    let offline = off.elapsed();
    step(&format!("the control plane powered on again after {} s", offline.as_secs()));
    vms[0].boot()?;
    wait_for("the Kubernetes API back", BOOT, || kubectl(&kubeconfig, &["get", "--raw", "/readyz"]).ok()?.ok().ok())
        .with_context(|| tail(&vms[0].serial_log()))?;
    for (i, node) in ["w1", "w2"].into_iter().enumerate() {
        wait_for(&format!("{node}'s Lease renewed after the outage"), BOOT, || {
            (lease(node).ok()? != renewed_before[i]).then_some(())
        })
        .with_context(|| tail(&vms[i + 1].serial_log()))?;
    }
    for node in NODES {
        wait_for(&format!("node {node} Ready again"), BOOT, || node_ready(&kubeconfig, node))
            .with_context(|| tail(&vms[0].serial_log()))?;
    }
    kubectl(&kubeconfig, &["rollout", "status", "deployment/web", ROLLOUT])?.ok()?;

    step("every probe made while the control plane was off answered; no worker pod restarted");
    for (name, ..) in probers {
        let log = probe_log(&kubeconfig, name)?;
        let since: Vec<_> = log.iter().filter(|p| p.seq > before_off[name]).collect();
        let failed: Vec<_> = since.iter().filter(|p| !p.ok).collect();
        let (first, last) = (since.first().context("no probes")?, since.last().context("no probes")?);
        eprintln!(
            "{name}: probes {}..={} over {} s (the guest's clock), {} failed",
            first.seq,
            last.seq,
            last.time - first.time,
            failed.len()
        );
        assert!(failed.is_empty(), "{name}: probes failed while the control plane was off: {failed:?}");
        // The probes span the whole outage (the guest's clock, which QEMU
        // keeps with the host's).
        let span = u64::try_from(last.time - first.time).unwrap_or(0);
        assert!(span + 2 >= offline.as_secs(), "{name}: probes over {span} s of a {} s outage", offline.as_secs());
    }
    for p in &worker_pods {
        assert_eq!(identity(&kubeconfig, p)?, identities[p], "{p}: (uid, container ID, restarts) changed");
    }

    step(&format!("w1 upgraded to {NEXT} with osctl upgrade, drained, while a prober on cp fetches the Service"));
    let file = w.join("probe-cp.yaml");
    std::fs::write(&file, prober_pod("probe-cp", "cp", &format!("http://{svc}/")))?;
    kubectl(&kubeconfig, &["apply", "-f", file.to_str().context("utf-8")?])?.ok()?;
    kubectl(&kubeconfig, &["wait", "--for=condition=Ready", "pod/probe-cp", ROLLOUT])?.ok()?;
    let before_upgrade = wait_for("probe-cp's first answer", Duration::from_secs(120), || {
        let log = probe_log(&kubeconfig, "probe-cp").ok()?;
        log.iter().any(|p| p.ok).then(|| log.last().map(|p| p.seq)).flatten()
    })?;
    // The budget is in force: three healthy, one disruption allowed.
    let pdb = r#"jsonpath={.status.currentHealthy} {.status.desiredHealthy} {.status.disruptionsAllowed}"#;
    wait_for("the PodDisruptionBudget at 3 healthy, 2 desired, 1 disruption allowed", BOOT, || {
        (kubectl(&kubeconfig, &["get", "pdb/web", "-o", pdb]).ok()?.stdout == "3 2 1").then_some(())
    })?;
    // The host watches the Deployment's available replicas meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let fewest = Arc::new(AtomicI64::new(i64::MAX));
    let watcher = {
        let (stop, fewest, kubeconfig) = (stop.clone(), fewest.clone(), kubeconfig.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let jsonpath = "jsonpath={.status.availableReplicas}";
                if let Ok(r) = kubectl(&kubeconfig, &["get", "deployment/web", "-o", jsonpath]) {
                    if let (0, Ok(n)) = (r.code, r.stdout.trim().parse::<i64>()) {
                        fewest.fetch_min(n, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let w1_api = vms[1].api_addr();
    let r = osctl(
        &op.osctlconfig(),
        &["-n", &w1_api, "-o", "json", "upgrade", "--bundle", bundle.to_str().context("utf-8")?],
    )
    .ok()?
    .json()?;
    eprintln!("osctl upgrade: {r}");
    assert_eq!(r["rebooting"], true, "{r}");
    let new_slot = r["slot"].as_str().context("slot")?.to_string();
    // Drained before the reboot: no pod of the Deployment, nor the bare prober, on w1.
    let on_w1 = kubectl(&kubeconfig, &["get", "pods", "-A", "--field-selector", "spec.nodeName=w1", "-o", "name"])?
        .ok()?
        .stdout;
    assert!(
        !on_w1.contains(&pod("w1")) && !on_w1.contains("probe-w1"),
        "w1's pods still there after the drain: {on_w1}"
    );
    let v = wait_for(&format!("w1 on slot {new_slot} running {NEXT}, committed"), BOOT, || {
        vms[1].supervise().ok()?;
        let v = osctl(&op.osctlconfig(), &["-n", &w1_api, "-o", "json", "version"]).json().ok()?;
        let s = slot(&v, &new_slot);
        (s["booted"] == true && s["state"] == "committed" && v[0]["plinth_version"] == NEXT).then_some(v)
    })
    .with_context(|| tail(&vms[1].serial_log()))?;
    eprintln!("w1: {v}");
    wait_for("w1 uncordoned and Ready", BOOT, || {
        let cordoned = get("node/w1", "{.spec.unschedulable}").ok()?;
        (cordoned != "true" && node_ready(&kubeconfig, "w1").is_some()).then_some(())
    })?;
    kubectl(&kubeconfig, &["rollout", "status", "deployment/web", ROLLOUT])?.ok()?;
    stop.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let fewest = fewest.load(Ordering::SeqCst);
    let log = probe_log(&kubeconfig, "probe-cp")?;
    let during: Vec<_> = log.iter().filter(|p| p.seq > before_upgrade).collect();
    let failed: Vec<_> = during.iter().filter(|p| !p.ok).collect();
    eprintln!(
        "upgrade of w1: {} probes of the Service, {} failed; fewest available replicas seen: {fewest}",
        during.len(),
        failed.len()
    );
    assert!(fewest >= 2, "the Deployment fell to {fewest} available replicas (PodDisruptionBudget minAvailable 2)");
    assert!(!during.is_empty(), "probe-cp made no probe during the upgrade");
    assert!(failed.len() <= UPGRADE_FAILURES_ALLOWED, "probes of the Service failed during the upgrade: {failed:?}");
    let out = kubectl(&kubeconfig, &["get", "pods", "-l", "app=web", "-o", listing])?.ok()?.stdout;
    assert_eq!(out.lines().filter(|l| !l.trim().is_empty()).count(), 3, "{out}");
    assert!(!out.contains(&pod("w1")), "w1's evicted pod is back: {out}");

    step("osctl reset of w2 deletes its Node, and its certificate requests go with it");
    let csrs = || -> anyhow::Result<Vec<String>> {
        let all = kubectl(&kubeconfig, &["get", "csr", "-o", "json"])?.ok()?.json()?;
        let mut owned: Vec<String> = all["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let refs = c["metadata"]["ownerReferences"].as_array();
                refs.into_iter().flatten().any(|r| r["kind"] == "Node" && r["name"] == "w2")
            })
            .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        owned.sort();
        Ok(owned)
    };
    let mut owned = Vec::new();
    // The join's request is owned by the Node once the controller has seen both.
    wait_for("w2's certificate requests owned by its Node", Duration::from_secs(60), || {
        owned = csrs().ok()?;
        (!owned.is_empty()).then_some(())
    })?;
    let reset = osctl(&op.osctlconfig(), &["-n", &vms[2].api_addr(), "reset", "--yes"]).ok()?;
    assert!(reset.stdout.contains("Node deleted"), "{reset:?}");
    let gone = kubectl(&kubeconfig, &["get", "node", "w2"])?;
    assert!(gone.code != 0 && gone.stderr.contains("NotFound"), "node w2 after the reset: {gone:?}");
    let mut left = owned.clone();
    wait_for("w2's certificate requests deleted with its Node", Duration::from_secs(60), || {
        left = csrs().ok()?;
        let names = kubectl(&kubeconfig, &["get", "csr", "-o", "name"]).ok()?.ok().ok()?.stdout;
        let any_left = owned
            .iter()
            .any(|c| names.lines().any(|l| l == format!("certificatesigningrequest.certificates.k8s.io/{c}")));
        (!any_left).then_some(())
    })
    .with_context(|| format!("before the reset {owned:?}, still owned {left:?}"))?;
    step("done");
    Ok(())
}
