//! Benchmark (not a test): a single node in QEMU (TCG) on a disk throttled
//! like a slow SD card ([`Throttle::SD_CARD`] unless `PLINTH_SD_THROTTLE`
//! says `IOPS,BYTES_PER_SECOND`) with the web Deployment and ten pods with
//! probes, held for `PLINTH_SD_HOLD_SECS` (default 1800, the 30
//! minutes). Prints power-on → Ready, the API's p50/p99/max latency (curl
//! GETs of the Node and its Lease through the forwarded port, about one a
//! second), the Lease's renewals and longest gap, and the services'
//! restarts; fails if the hold saw a problem (`Hold::problems`). Run with
//! `bench/sd-card.sh`.

use std::time::Duration;

use anyhow::Context as _;
use plinth_qemu::Throttle;
use plinth_tests::Operator;
use plinth_tests::cluster::{ClusterNode, ROLLOUT, busybox_image_options, tail};
use plinth_tests::sdcard::{Api, hold};

fn main() -> anyhow::Result<()> {
    let length =
        Duration::from_secs(std::env::var("PLINTH_SD_HOLD_SECS").ok().map(|s| s.parse()).transpose()?.unwrap_or(1800));
    let throttle = match std::env::var("PLINTH_SD_THROTTLE") {
        Ok(s) => s.parse::<Throttle>().map_err(anyhow::Error::msg)?,
        Err(_) => Throttle::SD_CARD,
    };
    let memory = 768;
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (board, opts) = busybox_image_options(&op, w)?;
    let image = opts.out.clone();
    image_builder::build(&opts)?;
    println!(
        "board {board}, guest memory {memory} MiB, disk throttled to {} I/Os and {} bytes per second, hold {} s",
        throttle.iops,
        throttle.bps,
        length.as_secs()
    );
    let node = ClusterNode::boot_throttled(&op, image, w, "sdbench", memory, Some(throttle))?;
    println!("power-on → Node Ready {:.1} s", node.to_ready.as_secs_f64());
    node.deploy_web(w)?;
    let manifest = w.join("probed.yaml");
    std::fs::write(&manifest, plinth_tests::writes::TEN_PODS)?;
    node.kubectl(&["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    node.kubectl(&["rollout", "status", "deployment/probed", ROLLOUT])?
        .ok()
        .with_context(|| tail(&node.vm.serial_log()))?;
    println!("web (2 pods) and probed (10 pods) rolled out; holding");
    let api = Api::new(&node, w)?;
    let held = hold(&node, &api, length)?;
    println!("{held}");
    let problems = held.problems();
    if !problems.is_empty() {
        anyhow::bail!("the hold on the throttled disk saw:\n{}", problems.join("\n"));
    }
    Ok(())
}
