//! Benchmark (not a test): the single-node cluster in QEMU (TCG). Prints
//! the time from power-on to the Node Ready and to the web Deployment
//! (2 busybox pods) Ready, guest RAM in use (MemTotal − MemAvailable) idle
//! and with the Deployment, the RSS of each service init runs, and each
//! step of a reboot with the Deployment on the node's own clock (kernel →
//! PID 1 → … → Node Ready → first pod Running; the new boot told apart by
//! its boot id; a missing step fails the run). Guest
//! memory: PLINTH_JOURNEY_MEMORY_MIB (default 512); board:
//! PLINTH_BENCH_BOARD (`qemu-x86_64`, or `arm64-virt` under `-M virt`).
//! Run with `bench/journey.sh [--board arm64-virt]`, which also finds the
//! smallest memory that works.

use std::time::{Duration, Instant};

use plinth_tests::cluster::{BOOT, ClusterNode};
use plinth_tests::footprint;
use plinth_tests::{Operator, boot};

fn print_footprint(node: &mut ClusterNode, when: &str) -> anyhow::Result<()> {
    // Let start-up work settle: the figure is the steady state.
    std::thread::sleep(Duration::from_secs(15));
    let v = node.version().ok_or_else(|| anyhow::anyhow!("no answer from the node"))?;
    let services = node.osctl(&["-o", "json", "services"]).ok()?.json()?;
    footprint::print(when, &v, &services)
}

fn main() -> anyhow::Result<()> {
    let memory = plinth_tests::cluster::journey_memory_mib();
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (board, opts) = plinth_tests::cluster::busybox_image_options(&op, w)?;
    let image = opts.out.clone();
    println!("board {board}, guest memory {memory} MiB");
    let t = Instant::now();
    let manifest = image_builder::build(&opts)?;
    println!("image build with busybox preloaded (kernel cached): {:.1} s", t.elapsed().as_secs_f64());
    for (name, size) in footprint::image_sizes(&manifest)? {
        println!("{name}: {:.1} MiB", size as f64 / 1048576.0);
    }

    let mut node = ClusterNode::boot(&op, image, w, "bench", memory)?;
    println!("power-on → API (apid, maintenance mode) {:.1} s wall clock under TCG", node.to_api.as_secs_f64());
    println!(
        "guest memory {memory} MiB: power-on → Node Ready {:.1} s wall clock under TCG (includes applying the config)",
        node.to_ready.as_secs_f64()
    );
    print_footprint(&mut node, "Node Ready, no pods")?;
    let t = Instant::now();
    node.deploy_web(w)?;
    println!(
        "kubectl apply → Deployment (2 pods) Ready {:.1} s; power-on → Deployment Ready {:.1} s",
        t.elapsed().as_secs_f64(),
        node.powered_on.elapsed().as_secs_f64()
    );
    print_footprint(&mut node, "with the Deployment")?;

    let before = boot::Boot::from_version(&node.version().ok_or_else(|| anyhow::anyhow!("no answer from the node"))?)?;
    let t = Instant::now();
    node.osctl(&["reboot"]).ok()?;
    let mut want = boot::TO_NODE_READY.to_vec();
    want.push(machinery::boot_steps::FIRST_POD_RUNNING);
    let reboot =
        boot::wait_boot("the first pod Running after a reboot", BOOT, Some(&before.id), &want, || node.version())?;
    reboot.print(
        &format!(
            "reboot with the Deployment; wall clock reboot → first pod Running {:.1} s",
            t.elapsed().as_secs_f64()
        ),
        &want,
        machinery::boot_steps::PID1,
        machinery::boot_steps::NODE_READY,
    )?;
    node.wait_web("after the reboot")?;
    Ok(())
}
