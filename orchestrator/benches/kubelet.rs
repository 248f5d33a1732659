//! Kubelet benchmark on a private containerd with a local busybox image:
//! pod create → Running latency, one pod at a time and 30 pods at once
//! (p50/p99, from the `kubectl create` call to the Running event of a
//! watch), and the RSS of the `orchestrator server --kubelet` process
//! (control plane and kubelet together) idle and with 30 pods.
//! Needs what tests/kubelet.rs needs (root, containerd…).
//! `cargo bench -p orchestrator --bench kubelet`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/kubelet_support/mod.rs"]
mod kubelet_support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kubelet_support::{BUSYBOX, Cluster};

const BATCH: usize = 30;
const SINGLES: usize = 10;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    [11, 12].iter().filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok())).sum()
}

fn pods_yaml(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}-{i}, labels: {{bench: \"{prefix}\"}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {BUSYBOX}, imagePullPolicy: IfNotPresent, command: [sleep, \"3600\"]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A watch of pod phases: (name, phase, when the line arrived).
fn watch(c: &Cluster) -> (std::process::Child, mpsc::Receiver<(String, String, Instant)>) {
    let mut child = Command::new(&c.kubectl)
        .args(["get", "pods", "--watch", "--no-headers", "-o", "custom-columns=N:.metadata.name,P:.status.phase"])
        .env("KUBECONFIG", c.data.path().join("admin.kubeconfig"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let mut f = line.split_whitespace();
            if let (Some(n), Some(p)) = (f.next(), f.next()) {
                let _ = tx.send((n.to_string(), p.to_string(), Instant::now()));
            }
        }
    });
    (child, rx)
}

fn run_batch(c: &Cluster, prefix: &str, n: usize) -> Vec<Duration> {
    let (mut w, rx) = watch(c);
    std::thread::sleep(Duration::from_millis(500));
    let f = c.data.path().join(format!("{prefix}.yaml"));
    std::fs::write(&f, pods_yaml(prefix, n)).unwrap();
    let t0 = Instant::now();
    c.ok(&["create", "-f", f.to_str().unwrap()]);
    let mut running = std::collections::HashMap::new();
    while running.len() < n {
        let (name, phase, at) = rx.recv_timeout(Duration::from_secs(120)).expect("pods reach Running");
        if phase == "Running" && name.starts_with(prefix) {
            running.entry(name).or_insert(at - t0);
        }
    }
    let _ = w.kill();
    let _ = w.wait();
    running.into_values().collect()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let Some(c) = Cluster::start() else { return };
    c.wait_for(&["get", "node", &c.node], Duration::from_secs(60), |s| s.contains(" Ready "));
    std::thread::sleep(Duration::from_secs(3));
    let pid = c.server_pid();
    let idle = rss_kib(pid);
    let mut singles = Vec::new();
    for i in 0..SINGLES {
        singles.extend(run_batch(&c, &format!("single{i}"), 1));
    }
    c.ok(&["delete", "pods", "-l", "bench", "--grace-period=1", "--wait=true"]);
    let mut batch = run_batch(&c, "batch", BATCH);
    std::thread::sleep(Duration::from_secs(3));
    let loaded = rss_kib(pid);
    let ticks = cpu_ticks(pid);
    let containerd_ticks = cpu_ticks(c.containerd.pid());
    let t_del = Instant::now();
    c.ok(&["delete", "pods", "-l", "bench", "--grace-period=1", "--wait=true"]);
    let deleted = t_del.elapsed();
    println!("kubelet benchmark (release binary, private containerd 1.6 + runc, local busybox image)");
    println!(
        "one pod at a time ({SINGLES}): create → Running p50 {:.0} ms, p99 {:.0} ms",
        percentile(&mut singles, 0.5).as_secs_f64() * 1e3,
        percentile(&mut singles, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "{BATCH} pods at once: create → Running p50 {:.0} ms, p99 {:.0} ms; deleted in {:.1} s",
        percentile(&mut batch, 0.5).as_secs_f64() * 1e3,
        percentile(&mut batch, 0.99).as_secs_f64() * 1e3,
        deleted.as_secs_f64()
    );
    println!(
        "RSS of orchestrator server --kubelet: idle {:.1} MiB, with {BATCH} pods {:.1} MiB; CPU time so far {:.1} s \
         (containerd itself {:.1} s, not counting shims, runc and CNI plugins)",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        ticks as f64 / 100.0,
        containerd_ticks as f64 / 100.0
    );
}
