//! A/B upgrades on a real image in QEMU: OVMF, systemd-boot's boot
//! counting, our PID 1 writing the other slot, driven with the real osctl.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use machinery::api;
use osctl::connect::{self, Credentials, LocalChecks};
use plinth_qemu::{Vm, VmOptions};
use plinth_tests::cluster::tail;
use plinth_tests::{
    Operator, bad_bundles, build_bundle, build_image, build_options, bundle_with, osctl, slot, static_bin_dir,
    wait_event, wait_for,
};

const BOOT: Duration = Duration::from_secs(240);

/// A booted, configured node in QEMU.
struct Node {
    vm: Vm,
    op: Operator,
    addr: String,
}

impl Node {
    fn boot(op: Operator, image: PathBuf, dir: &Path) -> anyhow::Result<Node> {
        let mut vm = Vm::start(VmOptions { image, name: "upgrade".into(), memory_mib: 256, dir: dir.join("vm") })?;
        vm.wait_for_api(BOOT)?;
        let addr = vm.api_addr();
        let cfg = op.gen_dhcp_config("node.toml", "unode")?;
        osctl(&op.osctlconfig(), &["-n", &addr, "--insecure", "apply-config", "-f", cfg.to_str().context("utf-8")?])
            .ok()?;
        let node = Node { vm, op, addr };
        node.wait_version("the configured node", |v| v[0]["mode"] == "configured")?;
        Ok(node)
    }

    fn osctl(&self, args: &[&str]) -> plinth_tests::Run {
        let mut all = vec!["-n", self.addr.as_str()];
        all.extend_from_slice(args);
        osctl(&self.op.osctlconfig(), &all)
    }

    /// Waits until `version` satisfies `ok`.
    fn wait_version(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<serde_json::Value> {
        wait_for(what, BOOT, || {
            let v = self.osctl(&["-o", "json", "version"]).json().ok()?;
            ok(&v).then_some(v)
        })
        .with_context(|| tail(&self.vm.serial_log()))
    }

    /// Waits until `slot` runs `version`, committed, with the config kept.
    fn wait_committed(&self, name: &str, version: &str) -> anyhow::Result<serde_json::Value> {
        let v = self.wait_version(&format!("slot {name} running {version}, committed"), |v| {
            let s = slot(v, name);
            s["booted"] == true && s["state"] == "committed" && v[0]["plinth_version"] == version
        })?;
        assert_eq!(v[0]["config_version"], 1, "the config survives: {v}");
        Ok(v)
    }

    fn upgrade(&self, bundle: &Path, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut args = vec!["-o", "json", "upgrade", "--bundle", bundle.to_str().context("utf-8")?];
        args.extend_from_slice(extra);
        self.osctl(&args).ok()?.json()
    }
}

#[test]
fn qemu_upgrade_a_to_b_and_back_rollback_and_a_broken_bundle_rolls_back_by_itself() -> anyhow::Result<()> {
    let _one = plinth_qemu::one_at_a_time();
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = w.join("plinth.img");
    build_image(&op, &image)?;
    let bundles: Vec<PathBuf> = ["0.2.0", "0.3.0"].iter().map(|v| w.join(format!("plinth-{v}.osb"))).collect();
    build_bundle(&op, &bundles[0], "0.2.0")?;
    build_bundle(&op, &bundles[1], "0.3.0")?;
    // A broken release: its init is not an init (apid, which exits at once
    // without its arguments), so the kernel panics at every boot of it.
    let broken_bins = w.join("broken-bins");
    std::fs::create_dir_all(&broken_bins)?;
    let bins = static_bin_dir()?;
    std::fs::copy(bins.join("apid"), broken_bins.join("apid"))?;
    std::fs::copy(bins.join("apid"), broken_bins.join("plinth-init"))?;
    std::fs::copy(bins.join("orchestrator"), broken_bins.join("orchestrator"))?;
    std::fs::copy(bins.join("plinth-pause"), broken_bins.join("plinth-pause"))?;
    let broken = w.join("plinth-0.4.0-broken.osb");
    let mut opts = build_options(&op, &broken, "0.4.0")?;
    opts.bin_dir = broken_bins;
    bundle_with(&opts, &op)?;

    let bad = bad_bundles(&op, &bundles[0], w)?;
    let node = Node::boot(op, image, w)?;
    let v = node.wait_version("slots", |v| slot(v, "a")["booted"] == true)?;
    assert_eq!(v[0]["plinth_version"], machinery::VERSION);

    // Bad bundles are refused, saying why, and leave both slots as they were
    // (host-mode tests hash the partitions: tests/upgrade_host.rs).
    for (name, bundle, want) in bad {
        let r = node.osctl(&["upgrade", "--bundle", bundle.to_str().context("utf-8")?]);
        assert_ne!(r.code, 0, "{name}: {r:?}");
        assert!(r.stderr.contains(want), "{name}: expected {want:?} in {r:?}");
        let after = node.osctl(&["-o", "json", "version"]).ok()?.json()?;
        assert_eq!(after[0]["slots"], v[0]["slots"], "{name}: the slots changed");
    }

    // A → B.
    let r = node.upgrade(&bundles[0], &[])?;
    assert_eq!((r["slot"].as_str(), r["rebooting"].as_bool()), (Some("b"), Some(true)), "{r}");
    node.wait_committed("b", "0.2.0")?;
    assert!(node.vm.serial_log().contains("slot b: root image"), "booted from ROOT-B");
    wait_event(
        || node.osctl(&["events"]),
        "slot b is healthy (node unode is Ready and its 0 pods are running): committed",
    )?;

    // B → A.
    let r = node.upgrade(&bundles[1], &[])?;
    assert_eq!(r["slot"], "a", "{r}");
    node.wait_committed("a", "0.3.0")?;

    // Rollback: B (0.2.0) again.
    let r = node.osctl(&["rollback"]).ok()?;
    assert!(r.stdout.contains("slot b boots next"), "{r:?}");
    node.wait_committed("b", "0.2.0")?;

    // The broken release goes to A, panics, and the boot loader falls back to B.
    let r = node.upgrade(&broken, &["--allow-downgrade"])?;
    assert_eq!(r["slot"], "a", "{r}");
    let v = node.wait_version("the fallback to slot B after the broken trial", |v| {
        slot(v, "a")["state"] == "failed" && slot(v, "b")["booted"] == true
    })?;
    assert_eq!(v[0]["plinth_version"], "0.2.0", "{v}");
    let log = node.vm.serial_log();
    assert!(log.contains("Kernel panic") || log.contains("Attempted to kill init"), "{}", tail(&log));
    let events = node.osctl(&["events"]).ok()?.stdout;
    assert!(events.contains("slot a failed its trial boot"), "{events}");
    Ok(())
}

/// Streams a bundle through the API as osctl does, counting bytes sent.
async fn stream_bundle(addr: String, creds: Credentials, bundle: PathBuf, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut c = connect::connect(&addr, &creds, LocalChecks::On).await?;
    let bytes = std::fs::read(&bundle)?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let opts = api::UpgradeOptions { stage: true, ..Default::default() };
        let _ = tx.send(api::UpgradeChunk { chunk: Some(api::upgrade_chunk::Chunk::Options(opts)) }).await;
        for chunk in bytes.chunks(256 << 10) {
            let data = api::UpgradeChunk { chunk: Some(api::upgrade_chunk::Chunk::Data(chunk.to_vec())) };
            if tx.send(data).await.is_err() {
                return;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    c.upgrade(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
    Ok(())
}

#[test]
fn qemu_power_cuts_during_an_upgrade_leave_the_node_on_its_old_slot() -> anyhow::Result<()> {
    let _one = plinth_qemu::one_at_a_time();
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = w.join("plinth.img");
    build_image(&op, &image)?;
    let bundle = w.join("plinth-0.2.0.osb");
    build_bundle(&op, &bundle, "0.2.0")?;
    let size = std::fs::metadata(&bundle)?.len();
    let mut node = Node::boot(op, image, w)?;
    let creds = Credentials::Mutual {
        ca: node.op.path("ca.crt"),
        crt: node.op.path("admin.crt"),
        key: node.op.path("admin.key"),
    };
    let rt = tokio::runtime::Runtime::new()?;

    enum Cut {
        /// After this share of the bundle was sent.
        Sent(u64),
        /// When the console shows this.
        Console(&'static str),
    }
    // Every point before the new slot is armed: during the upload, at its
    // end (the node staging and hashing), with the old entry removed, and
    // with the root written. (After arming, booting the new slot on trial is
    // the intended outcome.)
    let cuts = [
        Cut::Sent(size / 4),
        Cut::Sent(size * 9 / 10),
        Cut::Sent(size),
        Cut::Console("upgrade: slot b: boot entry removed"),
        Cut::Console("upgrade: slot b: root written"),
    ];
    for (i, cut) in cuts.iter().enumerate() {
        let sent = Arc::new(AtomicU64::new(0));
        let upload = rt.spawn(stream_bundle(node.addr.clone(), creds.clone(), bundle.clone(), sent.clone()));
        let t = Instant::now();
        loop {
            let now = match cut {
                Cut::Sent(n) => sent.load(Ordering::SeqCst) >= *n,
                Cut::Console(marker) => node.vm.serial_log().contains(marker),
            };
            if now {
                break;
            }
            anyhow::ensure!(!upload.is_finished(), "cut {i}: the upload ended before the cut point");
            anyhow::ensure!(t.elapsed() < BOOT, "cut {i}: the cut point never came: {}", tail(&node.vm.serial_log()));
            std::thread::sleep(Duration::from_millis(20));
        }
        node.vm.kill();
        upload.abort();
        node.vm.boot()?;
        node.vm.wait_for_api(BOOT)?;
        let v = node.wait_version(&format!("the node back after cut {i}"), |v| v[0]["mode"] == "configured")?;
        let (a, b) = (slot(&v, "a"), slot(&v, "b"));
        assert_eq!((a["booted"].as_bool(), a["state"].as_str()), (Some(true), Some("committed")), "cut {i}: {v}");
        assert_ne!(b["state"], "trial pending", "cut {i}: nothing half-written is armed: {v}");
        assert_eq!(v[0]["plinth_version"], machinery::VERSION, "cut {i}");
        eprintln!("cut {i}: back on slot a, slot b {}", b["state"]);
    }
    // And the upgrade still works after all that.
    let r = node.upgrade(&bundle, &[])?;
    assert_eq!(r["slot"], "b");
    node.wait_committed("b", "0.2.0")?;
    Ok(())
}
