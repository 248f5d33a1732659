//! An HA control plane on etcd in QEMU: three control planes and one
//! worker booted from the same image on one guest-to-guest network (as
//! `multinode.rs`: DHCP on eth0 with apid and the API forwarded to
//! 127.0.0.1, a static address on eth1). cp1 forms the etcd cluster
//! (`etcd_bootstrap`), cp2 and cp3 join it as members, the worker joins by
//! token and knows every control plane's endpoint. One test function
//! boots the guests once and checks, in order (each step printed as
//! `ha step: …`): every control plane's endpoint lists the four Nodes and
//! every member lists the three members; with a pod running on the worker
//! and a writer creating ConfigMaps through cp2 and cp3, cp1 (the member
//! that formed the cluster, and the worker's first endpoint) is powered
//! off (QEMU killed): writes go on being acknowledged through the others,
//! cp1's Node goes NotReady (the controllers run on a survivor) while
//! cp2, cp3 and the worker stay Ready and the worker's pod keeps running;
//! cp1 powered on again rejoins (its Node Ready, its member listing the
//! three, every acknowledged write read through cp1's own API server).
//! Then `osctl etcd snapshot` through cp1 and `osctl etcd restore` onto a
//! fresh lone control plane bring every acknowledged write back. The
//! restore runs in host mode (plinth-init, the orchestrator and Debian's
//! etcd on 127.0.0.10), not on a fifth guest: a fresh QEMU node would add
//! a boot of a minute and a half under TCG to a test already the longest
//! in CI, and the restore itself is the same code either way.
//! Needs `/usr/bin/etcd` (scripts/setup-debian.sh installs etcd-server).
//! Wall time on the 2-core build machine under load 15–20 (other builds
//! running): 884 s and 727 s; most of it is the four guests starved of
//! CPU. A write through cp2/cp3 in the seconds after the power-off may
//! fail (the store's client still tried the dead member: "keep-alive timed
//! out", "no answer within 5s"); the test allows such failures, printed
//! with the writer's count, and requires every acknowledged write kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use machinery::config::MachineConfig;
use plinth_qemu::{ClusterNet, Vm};
use plinth_tests::cluster::{BOOT, ROLLOUT, build_busybox_image, tail};
use plinth_tests::multinode::{apply, cluster_addr, gen_config, node_ready, power_on, wait_configured};
use plinth_tests::{HostNode, Operator, kubectl, osctl, wait_for};

/// The control planes (cluster addresses 10.5.0.1–3) and the worker (10.5.0.4).
const CPS: [&str; 3] = ["cp1", "cp2", "cp3"];
const WORKER: &str = "w1";
/// Where the snapshot is restored in host mode (etcd's ports are fixed:
/// an address no other test uses).
const RESTORE_ADDR: &str = "127.0.0.10";

/// Prints a step with the time since the test began.
fn step(text: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("ha step ({t} s): {text}");
}

/// Every control plane's Kubernetes endpoint on the cluster network.
fn endpoints() -> Vec<String> {
    (0..CPS.len()).map(|i| format!("https://{}:6443", cluster_addr(i))).collect()
}

fn quoted(v: &[String]) -> String {
    v.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ")
}

/// Replaces the one `from` in `text` by `to`, or fails naming the file.
fn edit(text: &str, from: &str, to: &str, file: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(text.matches(from).count() == 1, "{}: expected one {from:?} in\n{text}", file.display());
    Ok(text.replacen(from, to, 1))
}

/// Control plane `i`'s config: `osctl gen config`'s, on etcd with every
/// control plane as endpoints; cp1 forms the cluster.
fn control_plane_config(op: &Operator, dir: &Path, i: usize) -> anyhow::Result<PathBuf> {
    let toml = dir.join(format!("{}.toml", CPS[i]));
    let addr = format!("{}/24", cluster_addr(i));
    gen_config(op, &toml, &["--role", "controlplane", "--hostname", CPS[i], "--cluster-address", &addr])?;
    let bootstrap = if i == 0 { "etcd_bootstrap = true\n" } else { "" };
    let etcd = format!("datastore = \"etcd\"\nendpoints = [{}]\n{bootstrap}", quoted(&endpoints()));
    let text = edit(&std::fs::read_to_string(&toml)?, "datastore = \"sqlite\"\n", &etcd, &toml)?;
    std::fs::write(&toml, &text)?;
    let cfg = MachineConfig::parse(&toml.display().to_string(), &text)?;
    assert_eq!(cfg.etcd_address().map(|a| a.to_string()), Some(cluster_addr(i)), "{}'s etcd address", CPS[i]);
    Ok(toml)
}

/// The worker's config: it joins by token through cp1 and knows the others.
fn worker_config(op: &Operator, dir: &Path) -> anyhow::Result<PathBuf> {
    let toml = dir.join(format!("{WORKER}.toml"));
    let addr = format!("{}/24", cluster_addr(CPS.len()));
    let first = &endpoints()[0];
    gen_config(
        op,
        &toml,
        &["--role", "worker", "--hostname", WORKER, "--cluster-address", &addr, "--endpoint", first],
    )?;
    let all = format!("role = \"worker\"\nendpoints = [{}]\n", quoted(&endpoints()));
    let text = edit(&std::fs::read_to_string(&toml)?, "role = \"worker\"\n", &all, &toml)?;
    std::fs::write(&toml, &text)?;
    let cfg = MachineConfig::parse(&toml.display().to_string(), &text)?;
    assert_eq!(cfg.kube_endpoints(), endpoints(), "the worker's endpoints, cp1's first");
    Ok(toml)
}

/// Node `node`'s Ready condition status (`True`, `False`, `Unknown`) by `kubeconfig`.
fn ready_status(kubeconfig: &Path, node: &str) -> Option<String> {
    let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    let r = kubectl(kubeconfig, &["get", "node", node, "-o", jsonpath]).ok()?.ok().ok()?;
    Some(r.stdout)
}

/// The Node names `kubeconfig`'s API server lists, sorted.
fn node_names(kubeconfig: &Path) -> anyhow::Result<Vec<String>> {
    let out = kubectl(kubeconfig, &["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])?.ok()?.stdout;
    let mut names: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    names.sort();
    Ok(names)
}

/// The etcd member names node `api`'s member lists (`None` until it answers).
fn members(op: &Operator, api: &str) -> Option<Vec<String>> {
    let v = osctl(&op.osctlconfig(), &["-n", api, "-o", "json", "etcd", "members"]).json().ok()?;
    let mut names: Vec<String> =
        v.as_array()?.iter().map(|m| m["name"].as_str().unwrap_or_default().to_string()).collect();
    names.sort();
    Some(names)
}

/// Each control plane's last etcd log lines and init's lines about etcd
/// (the member's join), for a failure's context.
fn etcd_logs(op: &Operator, vms: &[Vm]) -> String {
    let mut out = String::new();
    for vm in vms {
        let r = osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "logs", "etcd", "--tail", "40"]);
        let etcd = format!("{}{}", r.stdout, r.stderr);
        let serial = vm.serial_log();
        let init: Vec<&str> = serial.lines().filter(|l| l.contains("etcd")).collect();
        let init = init[init.len().saturating_sub(20)..].join("\n");
        out.push_str(&format!(
            "=== {}: osctl logs etcd ===\n{etcd}\n=== {}: serial lines about etcd ===\n{init}\n",
            vm.name, vm.name
        ));
    }
    out
}

/// The ConfigMap names `kubeconfig`'s API server lists in `default`.
fn configmaps(kubeconfig: &Path) -> anyhow::Result<Vec<String>> {
    let out = kubectl(kubeconfig, &["get", "configmaps", "-o", "jsonpath={.items[*].metadata.name}"])?.ok()?.stdout;
    Ok(out.split_whitespace().map(str::to_string).collect())
}

/// A pod on the worker that only sleeps: it must keep running while a
/// control plane is down.
const STEADY: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: steady
spec:
  nodeName: w1
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: docker.io/library/busybox:plinth
    imagePullPolicy: IfNotPresent
    command: ["sleep", "86400"]
"#;

/// One write attempt of the writer.
#[derive(Debug, Clone)]
struct Attempt {
    name: String,
    through: String,
    at: Instant,
    /// `None` when acknowledged; what kubectl said otherwise.
    error: Option<String>,
}

/// Creates ConfigMaps `ha-0000`, `ha-0001`, … one at a time, through each
/// of `through` (name, kubeconfig) in turn, until `stop`.
fn writer(
    through: Vec<(String, PathBuf)>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let (via, kc) = &through[i % through.len()];
            let name = format!("ha-{i:04}");
            let literal = format!("--from-literal=i={i}");
            let r = kubectl(kc, &["--request-timeout=30s", "create", "configmap", &name, &literal]);
            let error = match r {
                Ok(r) if r.code == 0 => None,
                Ok(r) => Some(format!("exit {}: {}", r.code, r.stderr.trim())),
                Err(e) => Some(e.to_string()),
            };
            if error.is_some() {
                std::thread::sleep(Duration::from_millis(500));
            }
            log.lock().expect("writer log").push(Attempt { name, through: via.clone(), at: Instant::now(), error });
            i += 1;
        }
    })
}

/// A host-mode control plane on etcd listed alone, on [`RESTORE_ADDR`]:
/// `osctl gen config`'s (the same cluster CA) with its address, no route
/// (host mode configures no network) and `datastore = "etcd"`.
fn lone_control_plane(op: &Operator, etcd: &Path) -> anyhow::Result<(HostNode, PathBuf)> {
    let base = op.gen_config("restored.base.toml", 1)?;
    let mut text = std::fs::read_to_string(&base)?;
    text = edit(&text, "hostname = \"n1\"", "hostname = \"restored\"", &base)?;
    text = edit(&text, "\"10.0.0.5/24\"", &format!("\"{RESTORE_ADDR}/8\""), &base)?;
    if let Some(at) = text.find("[[machine.network.routes]]") {
        let end = text[at + 1..].find("\n[").map_or(text.len(), |e| at + 1 + e);
        text.replace_range(at..end, "");
    }
    let etcd_lines = format!("datastore = \"etcd\"\nendpoints = [\"https://{RESTORE_ADDR}:6443\"]\n");
    text = edit(&text, "datastore = \"sqlite\"\n", &etcd_lines, &base)?;
    let cfg = op.path("restored.toml");
    std::fs::write(&cfg, text)?;

    let kube = format!("{RESTORE_ADDR}:{}", plinth_tests::free_port());
    let node = plinth_tests::etcd_control_plane(op, &cfg, etcd, &kube)?;
    wait_for("the restored node's member", Duration::from_secs(90), || {
        (members(op, &node.addr())? == ["restored"]).then_some(())
    })
    .with_context(|| node.log())?;
    let kc = op.path("restored.kubeconfig");
    let url = format!("https://{kube}");
    let kcs = kc.to_str().context("utf-8")?.to_string();
    wait_for("the restored node's kubeconfig", Duration::from_secs(60), || {
        osctl(&op.osctlconfig(), &["-n", &node.addr(), "kubeconfig", "--server", &url, "--out", &kcs]).ok().ok()
    })
    .with_context(|| node.log())?;
    wait_for("the restored node's API", Duration::from_secs(60), || {
        kubectl(&kc, &["get", "--raw", "/readyz"]).ok()?.ok().ok()
    })
    .with_context(|| node.log())?;
    Ok((node, kc))
}

#[test]
fn three_control_planes_on_etcd_survive_one_powered_off_rejoin_it_and_a_snapshot_restores() -> anyhow::Result<()> {
    let etcd = PathBuf::from(std::env::var_os("PLINTH_ETCD").unwrap_or_else(|| "/usr/bin/etcd".into()));
    anyhow::ensure!(etcd.is_file(), "no etcd at {} (scripts/setup-debian.sh installs etcd-server)", etcd.display());
    step("building the image");
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = build_busybox_image(&op, w)?;

    let mut tomls = Vec::new();
    for i in 0..CPS.len() {
        tomls.push(control_plane_config(&op, w, i)?);
    }
    let worker_toml = worker_config(&op, w)?;

    step("powering on four VMs; the control planes' configs at once (cp2 and cp3 join through cp1)");
    let net = ClusterNet::new()?;
    let mut vms: Vec<Vm> = Vec::new();
    for name in CPS.iter().chain([&WORKER]) {
        vms.push(power_on(&image, w, name, net)?);
    }
    for (vm, toml) in vms.iter_mut().zip(&tomls) {
        apply(&op, vm, toml)?;
    }
    let serials = |vms: &[Vm]| -> String {
        vms.iter().map(|vm| format!("=== {} ===\n{}\n", vm.name, tail(&vm.serial_log()))).collect()
    };
    let kubeconfigs: Vec<PathBuf> = CPS.iter().map(|n| w.join(format!("{n}.kubeconfig"))).collect();
    let fetch_kubeconfig = |vm: &Vm, kc: &Path| -> anyhow::Result<()> {
        let (api, url, kc) = (vm.api_addr(), vm.kube_url(), kc.to_str().context("utf-8")?.to_string());
        wait_for(&format!("{}'s kubeconfig", vm.name), BOOT, || {
            osctl(&op.osctlconfig(), &["-n", &api, "kubeconfig", "--server", &url, "--out", &kc]).ok().ok()
        })
        .map(|_| ())
    };
    wait_configured(&op, &mut vms[0])?;
    fetch_kubeconfig(&vms[0], &kubeconfigs[0]).with_context(|| serials(&vms))?;
    wait_for("node cp1 Ready", BOOT, || node_ready(&kubeconfigs[0], "cp1")).with_context(|| serials(&vms))?;

    step("the worker joins by token through cp1");
    apply(&op, &mut vms[3], &worker_toml)?;
    for i in 1..CPS.len() {
        wait_configured(&op, &mut vms[i])?;
        fetch_kubeconfig(&vms[i], &kubeconfigs[i]).with_context(|| serials(&vms))?;
    }
    wait_configured(&op, &mut vms[3])?;
    let mut all: Vec<String> = CPS.iter().chain([&WORKER]).map(|s| s.to_string()).collect();
    all.sort();
    for name in &all {
        wait_for(&format!("node {name} Ready"), BOOT, || node_ready(&kubeconfigs[0], name))
            .with_context(|| serials(&vms))?;
    }

    step("every control plane's endpoint lists the four Nodes, every member the three members");
    for (i, kc) in kubeconfigs.iter().enumerate() {
        let names =
            wait_for(&format!("{}'s API", CPS[i]), BOOT, || node_names(kc).ok()).with_context(|| serials(&vms))?;
        assert_eq!(names, all, "the Nodes through {}'s endpoint", CPS[i]);
    }
    let want_members: Vec<String> = CPS.iter().map(|s| s.to_string()).collect();
    for vm in &vms[..CPS.len()] {
        let mut last = None;
        // A joining member is listed nameless until its etcd has caught up
        // and published itself: under TCG on a slow machine that can come
        // minutes after its Node is Ready (its API server uses the others).
        wait_for(&format!("{}'s member to list all three", vm.name), BOOT, || {
            last = members(&op, &vm.api_addr());
            (last.as_ref() == Some(&want_members)).then_some(())
        })
        .with_context(|| format!("last: {last:?}\n{}", etcd_logs(&op, &vms[..CPS.len()])))?;
    }

    step("a pod on the worker");
    let manifest = w.join("steady.yaml");
    std::fs::write(&manifest, STEADY)?;
    let (kc2, kc3) = (&kubeconfigs[1], &kubeconfigs[2]);
    kubectl(kc2, &["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    kubectl(kc2, &["wait", "--for=condition=Ready", "pod/steady", ROLLOUT])?.ok().with_context(|| serials(&vms))?;
    let pod_uid = kubectl(kc2, &["get", "pod", "steady", "-o", "jsonpath={.metadata.uid}"])?.ok()?.stdout;

    step("a writer through cp2 and cp3; cp1 powered off mid-traffic");
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let through = vec![("cp2".to_string(), kc2.clone()), ("cp3".to_string(), kc3.clone())];
    let writing = writer(through, stop.clone(), log.clone());
    let acked = |log: &Mutex<Vec<Attempt>>, after: Option<Instant>| -> Vec<String> {
        let log = log.lock().expect("writer log");
        log.iter().filter(|a| a.error.is_none() && after.is_none_or(|t| a.at > t)).map(|a| a.name.clone()).collect()
    };
    let result = (|| -> anyhow::Result<Instant> {
        wait_for("5 writes acknowledged before the power-off", Duration::from_secs(120), || {
            std::thread::sleep(Duration::from_millis(200));
            (acked(&log, None).len() >= 5).then_some(())
        })?;
        let off = Instant::now();
        vms[0].kill();

        step("cp1's Node goes NotReady (the controllers on a survivor); the writes go on through cp2 and cp3");
        let mut last = None;
        wait_for("node cp1 not Ready, seen through cp2", Duration::from_secs(300), || {
            std::thread::sleep(Duration::from_millis(500));
            last = ready_status(kc2, "cp1");
            last.as_deref().is_some_and(|s| s != "True").then_some(())
        })
        .with_context(|| format!("cp1's Ready status: {last:?}"))?;
        // The writer keeps going: at least 10 writes after the power-off,
        // and its last 5 attempts all acknowledged.
        wait_for("10 writes acknowledged after the power-off, the last 5 in a row", Duration::from_secs(300), || {
            std::thread::sleep(Duration::from_millis(200));
            let log = log.lock().expect("writer log");
            let after: Vec<&Attempt> = log.iter().filter(|a| a.at > off).collect();
            let ok = after.iter().filter(|a| a.error.is_none()).count();
            let tail_ok = after.len() >= 5 && after[after.len() - 5..].iter().all(|a| a.error.is_none());
            (ok >= 10 && tail_ok).then_some(())
        })?;

        step("cp2, cp3 and the worker stay Ready; the worker's pod runs on; both endpoints list the Nodes");
        for kc in [kc2, kc3] {
            assert_eq!(node_names(kc)?, all, "the Nodes through {}", kc.display());
            for name in ["cp2", "cp3", WORKER] {
                assert_eq!(ready_status(kc, name).as_deref(), Some("True"), "node {name} through {}", kc.display());
            }
        }
        let pod = kubectl(
            kc3,
            &[
                "get",
                "pod",
                "steady",
                "-o",
                r#"jsonpath={.metadata.uid} {.status.phase} {.status.containerStatuses[0].restartCount}"#,
            ],
        )?
        .ok()?
        .stdout;
        assert_eq!(pod, format!("{pod_uid} Running 0"), "the worker's pod: the same, running, never restarted");
        let out = kubectl(kc3, &["exec", "steady", "--", "echo", "still here"])?.ok()?.stdout;
        assert_eq!(out.trim(), "still here");
        Ok(off)
    })();
    stop.store(true, Ordering::SeqCst);
    writing.join().map_err(|_| anyhow::anyhow!("the writer panicked"))?;
    let attempts = log.lock().expect("writer log").clone();
    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.error.as_ref().map(|e| format!("{} through {}: {e}", a.name, a.through)))
        .collect();
    eprintln!(
        "writer: {} attempts, {} acknowledged; failed: {failed:#?}",
        attempts.len(),
        attempts.len() - failed.len()
    );
    let off = match result {
        Ok(off) => off,
        Err(e) => {
            let etcd_log = osctl(&op.osctlconfig(), &["-n", &vms[1].api_addr(), "logs", "etcd"]).stdout;
            let lines: Vec<&str> = etcd_log.lines().collect();
            let etcd_tail = lines[lines.len().saturating_sub(40)..].join("\n");
            return Err(e.context(format!("{}\n=== cp2's etcd log ===\n{etcd_tail}", serials(&vms))));
        }
    };
    let acknowledged = acked(&log, None);
    let after_off = acked(&log, Some(off)).len();
    eprintln!("writes acknowledged: {} ({after_off} after the power-off)", acknowledged.len());

    step("cp1 powered on again rejoins: Node Ready, its member lists the three, every write read through it");
    vms[0].boot()?;
    wait_for("node cp1 Ready again", BOOT, || {
        std::thread::sleep(Duration::from_millis(500));
        node_ready(kc2, "cp1")
    })
    .with_context(|| serials(&vms))?;
    let mut last = None;
    wait_for("cp1's member to list all three", BOOT, || {
        last = members(&op, &vms[0].api_addr());
        (last.as_ref() == Some(&want_members)).then_some(())
    })
    .with_context(|| format!("last: {last:?}\n{}", serials(&vms)))?;
    let kc1 = &kubeconfigs[0];
    let through_cp1 = wait_for("cp1's API", BOOT, || configmaps(kc1).ok()).with_context(|| serials(&vms))?;
    for kc in [kc1, kc2, kc3] {
        let present = if kc == kc1 { through_cp1.clone() } else { configmaps(kc)? };
        let missing: Vec<&String> = acknowledged.iter().filter(|n| !present.contains(n)).collect();
        assert!(missing.is_empty(), "acknowledged writes missing through {}: {missing:?}", kc.display());
    }
    for name in &all {
        assert_eq!(ready_status(kc1, name).as_deref(), Some("True"), "node {name} through cp1");
    }

    step("osctl etcd snapshot through cp1, then the VMs off");
    let snapshot = w.join("etcd.snapshot");
    let r = osctl(
        &op.osctlconfig(),
        &["-n", &vms[0].api_addr(), "etcd", "snapshot", "--out", snapshot.to_str().context("utf-8")?],
    )
    .ok()?;
    assert!(r.stdout.contains("etcd snapshot written to"), "{r:?}");
    for vm in &mut vms {
        vm.stop(Duration::from_secs(10));
    }

    step("osctl etcd restore onto a fresh lone control plane (host mode) brings every write back");
    let (node, kc) = lone_control_plane(&op, &etcd)?;
    let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "etcd", "restore", snapshot.to_str().context("utf-8")?])
        .ok()
        .with_context(|| node.log())?;
    assert!(r.stdout.contains("etcd restored") && r.stdout.contains("a new cluster of restored alone"), "{r:?}");
    let present = wait_for("the API after the restore", Duration::from_secs(60), || {
        let names = configmaps(&kc).ok()?;
        names.contains(&acknowledged[0]).then_some(names)
    })
    .with_context(|| node.log())?;
    let missing: Vec<&String> = acknowledged.iter().filter(|n| !present.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged writes missing after the restore: {missing:?}");
    let nodes = node_names(&kc)?;
    assert!(all.iter().all(|n| nodes.contains(n)), "the cluster's Nodes come back with the snapshot: {nodes:?}");
    let members_now = members(&op, &node.addr());
    assert_eq!(members_now.as_deref(), Some(&["restored".to_string()][..]), "a new cluster of one");
    kubectl(&kc, &["create", "configmap", "after-restore"])?.ok()?;
    step("done");
    Ok(())
}
