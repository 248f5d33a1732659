//! Kubelet benchmark on a private containerd with a local busybox image:
//! pod create → Running latency, one pod at a time and 30 pods at once
//! (p50/p99, from the `kubectl create` call to the Running event of a
//! watch; create → bound by the scheduler too), where the kubelet's syncs
//! spent their time (its per-pod step timings, `orchestrator_kubelet::timing`,
//! read back from the server's log: p50/p99 per step), and the RSS of the `orchestrator server --kubelet` process
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
    stat_ticks(pid, &[11, 12])
}

/// User + system CPU time of the children a process waited for (containerd's: the CNI plugins, `runc`
/// of sandbox set-up, the shims' start commands), in clock ticks.
fn children_ticks(pid: u32) -> u64 {
    stat_ticks(pid, &[13, 14])
}

fn stat_ticks(pid: u32, fields: &[usize]) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    fields.iter().filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok())).sum()
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

/// A watch of pod phases and nodes: (name, phase, node, when the line arrived).
fn watch(c: &Cluster) -> (std::process::Child, mpsc::Receiver<(String, String, String, Instant)>) {
    let mut child = Command::new(&c.kubectl)
        .args([
            "get",
            "pods",
            "--watch",
            "--no-headers",
            "-o",
            "custom-columns=N:.metadata.name,P:.status.phase,NODE:.spec.nodeName",
        ])
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
            if let (Some(n), Some(p), Some(node)) = (f.next(), f.next(), f.next()) {
                let _ = tx.send((n.to_string(), p.to_string(), node.to_string(), Instant::now()));
            }
        }
    });
    (child, rx)
}

/// Create → Running and create → bound (nodeName set) of each pod of a batch.
fn run_batch(c: &Cluster, prefix: &str, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut w, rx) = watch(c);
    std::thread::sleep(Duration::from_millis(500));
    let f = c.data.path().join(format!("{prefix}.yaml"));
    std::fs::write(&f, pods_yaml(prefix, n)).unwrap();
    let t0 = Instant::now();
    c.ok(&["create", "-f", f.to_str().unwrap()]);
    let mut running = std::collections::HashMap::new();
    let mut bound = std::collections::HashMap::new();
    while running.len() < n {
        let (name, phase, node, at) = rx.recv_timeout(Duration::from_secs(120)).expect("pods reach Running");
        if !name.starts_with(prefix) {
            continue;
        }
        if node != "<none>" {
            bound.entry(name.clone()).or_insert(at - t0);
        }
        if phase == "Running" {
            running.entry(name).or_insert(at - t0);
        }
    }
    let _ = w.kill();
    let _ = w.wait();
    (running.into_values().collect(), bound.into_values().collect())
}

/// The kubelet's step timings of the pods named `<prefix>…` from the server's log:
/// per step (in the order steps first appear), each pod's total of that step.
fn steps(log: &str, prefix: &str) -> Vec<(String, Vec<Duration>)> {
    let mut out: Vec<(String, Vec<Duration>)> = Vec::new();
    for (pod, steps) in log.lines().filter_map(orchestrator_kubelet::timing::parse_line) {
        if !pod.starts_with(prefix) {
            continue;
        }
        let mut per_pod: Vec<(String, f64)> = Vec::new();
        for (name, ms) in steps {
            match per_pod.iter_mut().find(|(n, _)| *n == name) {
                Some((_, t)) => *t += ms,
                None => per_pod.push((name, ms)),
            }
        }
        for (name, ms) in per_pod {
            let d = Duration::from_secs_f64(ms / 1e3);
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(d),
                None => out.push((name, vec![d])),
            }
        }
    }
    out
}

fn print_steps(c: &Cluster, prefix: &str, what: &str) {
    let table = steps(&c.server_log(), prefix);
    assert!(!table.is_empty(), "no kubelet step timings for {prefix}* in the server's log");
    let cells: Vec<String> = table
        .into_iter()
        .map(|(name, mut v)| {
            let p50 = percentile(&mut v, 0.5).as_secs_f64() * 1e3;
            let p99 = percentile(&mut v, 0.99).as_secs_f64() * 1e3;
            format!("{name} {p50:.0}/{p99:.0}")
        })
        .collect();
    println!("  kubelet syncs that started pods, {what}, ms p50/p99: {}", cells.join(", "));
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The 1-minute load average (the machine may be shared: figures are only comparable at similar loads).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

fn main() {
    let load_before = load();
    let Some(c) = Cluster::start_logging("orchestrator=info,orchestrator_kubelet::timing=debug") else { return };
    c.wait_for(&["get", "node", &c.node], Duration::from_secs(60), |s| s.contains(" Ready "));
    std::thread::sleep(Duration::from_secs(3));
    let pid = c.server_pid();
    let idle = rss_kib(pid);
    let (mut singles, mut singles_bound) = (Vec::new(), Vec::new());
    for i in 0..SINGLES {
        let (running, bound) = run_batch(&c, &format!("single{i}"), 1);
        singles.extend(running);
        singles_bound.extend(bound);
    }
    c.ok(&["delete", "pods", "-l", "bench", "--grace-period=1", "--wait=true"]);
    let (mut batch, mut batch_bound) = run_batch(&c, "batch", BATCH);
    std::thread::sleep(Duration::from_secs(3));
    let loaded = rss_kib(pid);
    let ticks = cpu_ticks(pid);
    let containerd_ticks = cpu_ticks(c.containerd.pid());
    let containerd_children = children_ticks(c.containerd.pid());
    let t_del = Instant::now();
    c.ok(&["delete", "pods", "-l", "bench", "--grace-period=1", "--wait=true"]);
    let deleted = t_del.elapsed();
    println!(
        "kubelet benchmark (release binary, private containerd 1.6 + runc, local busybox image; load average {load_before} → {})",
        load()
    );
    let ms = |v: &mut Vec<Duration>, p| percentile(v, p).as_secs_f64() * 1e3;
    println!(
        "one pod at a time ({SINGLES}): create → Running p50 {:.0} ms, p99 {:.0} ms (→ bound p50 {:.0} ms)",
        ms(&mut singles, 0.5),
        ms(&mut singles, 0.99),
        ms(&mut singles_bound, 0.5)
    );
    print_steps(&c, "single", "one at a time");
    println!(
        "{BATCH} pods at once: create → Running p50 {:.0} ms, p99 {:.0} ms (→ bound p50 {:.0}, p99 {:.0} ms); deleted in {:.1} s",
        ms(&mut batch, 0.5),
        ms(&mut batch, 0.99),
        ms(&mut batch_bound, 0.5),
        ms(&mut batch_bound, 0.99),
        deleted.as_secs_f64()
    );
    print_steps(&c, "batch", "30 at once");
    println!(
        "RSS of orchestrator server --kubelet: idle {:.1} MiB, with {BATCH} pods {:.1} MiB; CPU time so far {:.1} s \
         (containerd itself {:.1} s, its children — CNI plugins, shim starts — {:.1} s, not counting the shims and runc)",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        ticks as f64 / 100.0,
        containerd_ticks as f64 / 100.0,
        containerd_children as f64 / 100.0
    );
}
