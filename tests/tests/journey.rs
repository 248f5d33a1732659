//! The whole journey on one node in QEMU, through the public interfaces
//! only: an image with busybox preloaded, a signed config applied with
//! osctl, the kubeconfig from osctl, a Deployment + Service + ConfigMap with
//! real kubectl (rollout status, logs, exec, one pod reaching the other),
//! an A/B upgrade after which the same Deployment is Ready again with no
//! user action, and a rollback after which it is too. The same journey
//! runs on x86-64 (`qemu-x86_64`: q35, UEFI, systemd-boot) and on arm64
//! (`arm64-virt`: `qemu-system-aarch64 -M virt` under TCG, the Pi's
//! `autoboot.txt` tryboot A/B with the harness as firmware, aarch64
//! binaries and an arm64 busybox).

use std::time::Duration;

use anyhow::Context as _;
use machinery::layout::Slot;
use plinth_qemu::firmware::TRYBOOT_RESTART;
use plinth_tests::cluster::{ClusterNode, journey_memory_mib, tail};
use plinth_tests::{Operator, build_options_for, bundle_with, busybox_archive, slot, wait_event, wait_for};

#[test]
fn image_to_kubectl_workloads_through_an_upgrade_and_a_rollback() -> anyhow::Result<()> {
    journey("qemu-x86_64", "jnode")
}

#[test]
fn arm64_virt_image_to_kubectl_workloads_through_an_upgrade_and_a_rollback() -> anyhow::Result<()> {
    journey("arm64-virt", "anode")
}

/// The journey on an image for `board`, its node named `hostname`.
fn journey(board: &str, hostname: &str) -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = w.join("plinth.img");
    let mut opts = build_options_for(&op, &image, machinery::VERSION, board)?;
    let arch = image_builder::load_board(board, &opts.board_dir)?.arch;
    let busybox = busybox_archive(w, arch)?;
    opts.preload_images = vec![busybox.clone()];
    image_builder::build(&opts)?;
    let bundle = w.join("plinth-0.2.0.osb");
    let mut bundle_opts = build_options_for(&op, &bundle, "0.2.0", board)?;
    bundle_opts.preload_images = vec![busybox];
    bundle_with(&bundle_opts, &op)?;

    let _one = plinth_qemu::one_at_a_time();
    let started = std::time::Instant::now();
    let mut node = ClusterNode::boot(&op, image, w, hostname, journey_memory_mib())?;
    let runs = match arch {
        machinery::board::Arch::X86_64 => "x86_64",
        machinery::board::Arch::Aarch64 => "aarch64",
    };
    assert_eq!(node.version().map(|v| v[0]["arch"].clone()), Some(runs.into()), "{board} runs {runs} binaries");
    let services = node.osctl(&["-o", "json", "services"]).ok()?.json()?;
    for name in ["apid", "containerd", "orchestrator"] {
        let s = services.as_array().into_iter().flatten().find(|s| s["name"] == name);
        assert_eq!(s.map(|s| &s["state"]), Some(&serde_json::json!("running")), "{name}: {services}");
    }

    // The workload: busybox from the image's preloaded archive, no registry.
    node.deploy_web(w)?;
    let before = node.web_pods()?;
    assert_eq!(before.len(), 2, "{before:?}");
    let logs = node.kubectl(&["logs", &format!("pod/{}", before[0].0)])?.ok()?;
    assert!(logs.stdout.contains("serving: hello from a configmap"), "{logs:?}");
    let exec = node.kubectl(&["exec", &before[0].0, "--", "cat", "/config/greeting"])?.ok()?;
    assert_eq!(exec.stdout, "hello from a configmap");
    // Pod to pod over the node's bridge.
    let url = format!("http://{}:8080/", before[1].1);
    let got = node.kubectl(&["exec", &before[0].0, "--", "wget", "-q", "-O", "-", &url])?.ok()?;
    assert_eq!(got.stdout, "hello from a configmap", "{url}");
    let svc = node.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?.ok()?;
    assert!(svc.stdout.starts_with("10.96."), "{svc:?}");
    // Through the Service's cluster IP (the node's service proxy).
    let url = format!("http://{}/", svc.stdout);
    let got = node
        .kubectl(&["exec", &before[0].0, "--", "wget", "-q", "-O", "-", &url])?
        .ok()
        .with_context(|| tail(&node.osctl(&["logs", "orchestrator"]).stdout))?;
    assert_eq!(got.stdout, "hello from a configmap", "{url}");
    // And by name, through the node's cluster DNS.
    let found = node.kubectl(&["exec", &before[0].0, "--", "nslookup", "web.default.svc.cluster.local"])?.ok()?;
    assert!(found.stdout.contains(&format!("Address: {}", svc.stdout)), "{found:?}");

    // The upgrade: the node reboots into slot B, which is committed only
    // once the node is Ready and both pods run again, by themselves.
    let r = node.osctl(&["-o", "json", "upgrade", "--bundle", bundle.to_str().context("utf-8")?]).ok()?.json()?;
    assert_eq!(r["slot"], "b", "{r}");
    let committed = |name: &'static str, version: &'static str| {
        move |v: &serde_json::Value| {
            let s = slot(v, name);
            s["booted"] == true && s["state"] == "committed" && v[0]["plinth_version"] == version
        }
    };
    let on_b = committed("b", "0.2.0");
    wait_for("slot b committed", Duration::from_secs(900), || node.version().filter(|v| on_b(v)))
        .with_context(|| tail(&node.vm.serial_log()))?;
    if node.vm.machine.pi_layout() {
        // The harness played the Pi firmware: B's boot files, after a tryboot.
        assert_eq!(node.vm.booted_slot, Some(Slot::B));
        assert!(node.vm.serial_log().contains(TRYBOOT_RESTART), "{}", tail(&node.vm.serial_log()));
    }
    let healthy = format!("slot b is healthy (node {hostname} is Ready and its 2 pods are running");
    wait_event(|| node.osctl(&["events"]), &healthy)?;
    node.wait_web("after the upgrade")?;
    let after = node.web_pods()?;
    let names = |p: &[(String, String)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "the same pods run again");
    let exec = node.kubectl(&["exec", &after[1].0, "--", "cat", "/config/greeting"])?.ok()?;
    assert_eq!(exec.stdout, "hello from a configmap");

    // The rollback: slot A again, and the Deployment with it.
    node.osctl(&["rollback"]).ok()?;
    let on_a = committed("a", machinery::VERSION);
    wait_for("slot a back", Duration::from_secs(600), || node.version().filter(|v| on_a(v)))
        .with_context(|| tail(&node.vm.serial_log()))?;
    node.wait_web("after the rollback")?;
    assert_eq!(names(&node.web_pods()?), names(&before));
    if node.vm.machine.pi_layout() {
        assert_eq!(node.vm.booted_slot, Some(Slot::A), "autoboot.txt names A again");
    }
    eprintln!("{board}: power-on → rolled back {:.0} s wall", started.elapsed().as_secs_f64());
    Ok(())
}
