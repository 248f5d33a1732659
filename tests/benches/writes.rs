//! Benchmark (not a test): the write budget of a single-node cluster in
//! QEMU (TCG). Prints the bytes written per hour to the guest's disk and by
//! each writer (init, each service; the rest is the kernel's ext4 journal
//! and processes that are not services), idle with the Node Ready and with
//! ten pods running with readiness and liveness probes. Each figure is a
//! measured window (`PLINTH_WRITES_WINDOW_SECS`, default 300) scaled to an
//! hour, after a settling minute. Figures come from the guest's
//! /proc/diskstats and /proc/PID/io through `osctl version` and `osctl
//! services`; a missing one fails the run. Run with `bench/writes.sh`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_tests::Operator;
use plinth_tests::cluster::{ClusterNode, ROLLOUT, tail};
use plinth_tests::writes::{Snapshot, TEN_PODS, budget};

fn snapshot(node: &mut ClusterNode) -> anyhow::Result<Snapshot> {
    let version = node.version().context("no answer from the node")?;
    let services = node.osctl(&["-o", "json", "services"]).ok()?.json()?;
    Snapshot::from_json(&version, &services)
}

fn measure(node: &mut ClusterNode, what: &str, window: Duration) -> anyhow::Result<()> {
    let pi_layout = node.vm.machine.pi_layout();
    // Start-up work settles first: the figure is the steady state.
    std::thread::sleep(Duration::from_secs(60));
    let before = snapshot(node)?;
    std::thread::sleep(window);
    let after = snapshot(node)?;
    println!("{what}:\n{}", budget(&before, &after, pi_layout)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let window = Duration::from_secs(
        std::env::var("PLINTH_WRITES_WINDOW_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300),
    );
    let memory = 768;
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (board, opts) = plinth_tests::cluster::busybox_image_options(&op, w)?;
    let image = opts.out.clone();
    image_builder::build(&opts)?;
    println!("board {board}, guest memory {memory} MiB, window {} s per figure", window.as_secs());
    let t = Instant::now();
    let mut node = ClusterNode::boot(&op, image, w, "bench", memory)?;
    println!("power-on → Node Ready {:.1} s", t.elapsed().as_secs_f64());
    measure(&mut node, "idle, Node Ready, no pods", window)?;
    let manifest = w.join("probed.yaml");
    std::fs::write(&manifest, TEN_PODS)?;
    node.kubectl(&["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    node.kubectl(&["rollout", "status", "deployment/probed", ROLLOUT])?
        .ok()
        .with_context(|| tail(&node.vm.serial_log()))?;
    measure(&mut node, "ten pods running with probes", window)?;
    Ok(())
}
