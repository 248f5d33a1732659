//! A node on a disk as slow as a cheap SD card (QEMU's block throttling:
//! [`Throttle::SD_CARD`], 200 I/Os and 4 MiB per second, reads and writes
//! together): it boots, takes its config, runs a Deployment, and then holds
//! for [`HOLD`] — the CI-sized part of the 30 minutes, which
//! `bench/sd-card.sh` runs — with the Node Ready throughout, its Lease
//! renewed within its duration every time, no service restarted by init and
//! no pod restarted. One boot.

use std::time::Duration;

use plinth_qemu::Throttle;
use plinth_tests::Operator;
use plinth_tests::cluster::{ClusterNode, build_busybox_image, journey_memory_mib, tail};
use plinth_tests::sdcard::{Api, hold};

/// The CI-sized hold: three Lease durations (60 s each) and more than
/// eight renewals (every 20 s).
const HOLD: Duration = Duration::from_secs(180);

#[test]
fn a_node_on_a_throttled_sd_card_holds_three_minutes_ready_with_no_restart_and_no_lease_lost() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = build_busybox_image(&op, w)?;

    let _one = plinth_qemu::one_at_a_time();
    let node = ClusterNode::boot_throttled(&op, image, w, "sdnode", journey_memory_mib(), Some(Throttle::SD_CARD))?;
    eprintln!("on the throttled disk: power-on → Node Ready {:.0} s", node.to_ready.as_secs_f64());
    node.deploy_web(w)?;
    let api = Api::new(&node, w)?;
    let held = hold(&node, &api, HOLD)?;
    eprintln!("on the throttled disk:\n{held}");
    let problems = held.problems();
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), tail(&node.vm.serial_log()));
    assert_eq!(held.restarts.get("orchestrator"), Some(&0), "{held}");

    // The workload ran throughout: both pods available, none restarted.
    let available = node.kubectl(&["get", "deployment", "web", "-o", "jsonpath={.status.availableReplicas}"])?.ok()?;
    assert_eq!(available.stdout, "2", "{available:?}");
    let restarts = node
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
        ])?
        .ok()?;
    assert_eq!(restarts.stdout, "0 0", "{restarts:?}");
    Ok(())
}
