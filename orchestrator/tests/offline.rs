//! Offline operation (issue 15 item 9): a worker's kubelet whose control
//! plane goes away keeps its pods running, restarts a killed container and
//! one whose liveness probe fails on its own, and when the control plane
//! comes back reconciles without restarting anything: the Node is Ready
//! (it never left Ready), the statuses show the two restarts, every other
//! container is the one that ran before. The real `orchestrator server`
//! and `orchestrator kubelet` processes over a private containerd.

mod common;
mod kubelet_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kubelet_support::{BUSYBOX, Cluster};

const READY: Duration = Duration::from_secs(90);
/// How long the control plane stays away: long enough for several of the
/// kubelet's passes, restarts and probes, short enough for CI.
const OFFLINE: Duration = Duration::from_secs(30);

/// containerd's running tasks: container id → pid.
fn running_tasks(c: &Cluster) -> BTreeMap<String, String> {
    let out = c.containerd.ctr(&["tasks", "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (id, pid, status) = (f.next()?, f.next()?, f.next()?);
            (status == "RUNNING").then(|| (id.to_string(), pid.to_string()))
        })
        .collect()
}

fn container_id(c: &Cluster, pod: &str) -> String {
    let id = c.pod_field(pod, ".status.containerStatuses[0].containerID");
    id.trim_start_matches("containerd://").to_string()
}

/// A pod of one busybox container; `extra` is added to the container, `volumes` to the pod spec.
fn pod(name: &str, extra: &str, volumes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{volumes}  containers:\n  - name: c\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [sh, -c, 'touch /tmp/alive; exec sleep 3600']\n{extra}---\n"
    )
}

#[test]
fn pods_run_on_while_the_control_plane_is_away_and_reconcile_without_restarts() {
    let Some(mut c) = Cluster::start_split() else { return };
    let names = ["steady-1", "steady-2", "killed", "probed"];
    // The killed pod's volume is a claim: read from the API at each sync, from memory while it is away.
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 16Mi}}\n---\n";
    let probe = "    livenessProbe: {exec: {command: [test, -f, /tmp/alive]}, periodSeconds: 1, failureThreshold: 1}\n";
    let mount = "    volumeMounts: [{name: data, mountPath: /data}]\n";
    let volume = "  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]\n";
    let manifest = [
        claim.to_string(),
        pod("steady-1", "", ""),
        pod("steady-2", "", ""),
        pod("killed", mount, volume),
        pod("probed", probe, ""),
    ];
    c.apply(&manifest.concat());
    for n in names {
        c.wait_for(&["get", "pod", n, "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| s == "true");
    }
    let ids: BTreeMap<&str, String> = names.iter().map(|n| (*n, container_id(&c, n))).collect();
    let before = running_tasks(&c);
    assert!(ids.values().all(|id| before.contains_key(id)), "{ids:?} {before:?}");
    let ready_since =
        c.ok(&["get", "node", &c.node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastTransitionTime}"]);

    c.stop_control_plane();
    let away = Instant::now();
    // A crash: the container's process is killed.
    let killed_pid: i32 = before[&ids["killed"]].parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // A failing liveness probe: its file goes (seen through the process's root).
    std::fs::remove_file(format!("/proc/{}/root/tmp/alive", before[&ids["probed"]])).unwrap();
    std::thread::sleep(OFFLINE);
    let during = running_tasks(&c);
    for n in ["steady-1", "steady-2"] {
        assert_eq!(during.get(&ids[n]), before.get(&ids[n]), "{n} kept its container and process");
    }
    for n in ["killed", "probed"] {
        assert!(!during.contains_key(&ids[n]), "{n}'s first container is gone: {during:?}");
    }
    let gone: BTreeSet<&String> = before.keys().filter(|k| !during.contains_key(*k)).collect();
    let new: BTreeSet<&String> = during.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(
        (gone.len(), new.len()),
        (2, 2),
        "two containers replaced by the kubelet on its own: {gone:?} → {new:?}"
    );
    assert!(c.server_log().contains("on our own"), "the kubelet says it runs on its own");

    c.start_control_plane();
    c.wait_for(&["get", "node", &c.node, "--no-headers"], READY, |s| s.contains(" Ready "));
    let on_its_own = away.elapsed();
    for n in ["killed", "probed"] {
        c.wait_for(&["get", "pod", n, "-o", "jsonpath={.status.containerStatuses[0].restartCount}"], READY, |s| {
            s == "1"
        });
        let now = container_id(&c, n);
        assert!(now != ids[n] && new.contains(&now), "{n}: {now} is the kubelet's replacement");
    }
    // Several passes of the reconnected kubelet: nothing restarted by it.
    std::thread::sleep(Duration::from_secs(3));
    for n in ["steady-1", "steady-2"] {
        assert_eq!(container_id(&c, n), ids[n]);
        assert_eq!(c.pod_field(n, ".status.containerStatuses[0].restartCount"), "0");
    }
    assert_eq!(running_tasks(&c), during, "the same containers and processes after the reconnection");
    let ready_now =
        c.ok(&["get", "node", &c.node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].lastTransitionTime}"]);
    assert_eq!(ready_now, ready_since, "the Node never left Ready");
    assert!(c.server_log().contains("API server reachable again"));
    eprintln!("the kubelet ran on its own for {on_its_own:.1?}");
}
