//! A/B upgrades on a host-mode node whose boot disk is a real Plinth image
//! file (GPT, FAT EFI partition, squashfs roots): init plays systemd-boot's
//! part at each start (pick the entry, count a try down), so the whole
//! state machine runs in seconds. QEMU proves the same on a real boot
//! loader (tests/upgrade_qemu.rs).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use plinth_tests::{
    Operator, bad_bundles, build_bundle, build_image, configured_node_on, osctl, slot, split_bundle, wait_event,
    wait_for,
};

/// `good`'s payload under a manifest re-signed with another version and
/// security version (the operator's key): what a release with that
/// security version would be, without building one.
fn resigned(op: &Operator, good: &Path, out: &Path, version: &str, security: u64) -> anyhow::Result<()> {
    let (header, payload) = split_bundle(op, good)?;
    let key = machinery::signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    let mut m = header.manifest;
    m.version = version.into();
    m.security_version = security;
    std::fs::write(out, [machinery::bundle::Header::sign(m, &key).encode(), payload].concat())?;
    Ok(())
}

/// What must not change when a bundle is refused: both roots and the boot
/// entries.
fn snapshot(image: &Path) -> anyhow::Result<(String, String, Vec<String>)> {
    let disk = init::disk::Disk::open(image)?;
    let len = disk.partition("ROOT-A")?.size;
    let mut entries = disk.efi()?.entries()?;
    entries.sort();
    Ok((disk.hash("ROOT-A", len)?, disk.hash("ROOT-B", len)?, entries))
}

/// A host node on a fresh image, configured, and a bundle of Plinth 0.2.0.
struct Setup {
    op: Operator,
    work: tempfile::TempDir,
    image: std::path::PathBuf,
    good: std::path::PathBuf,
    node: plinth_tests::HostNode,
}

fn setup() -> anyhow::Result<Setup> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    build_image(&op, &image)?;
    let good = work.path().join("plinth-0.2.0.osb");
    build_bundle(&op, &good, "0.2.0")?;
    let (node, _) = configured_node_on(&op, Some(&image))?;
    Ok(Setup { op, work, image, good, node })
}

/// "Reboots" a node whose slot B is armed, and waits for B to commit.
fn reboot_into_committed_b(node: &mut plinth_tests::HostNode, c: &Path) -> anyhow::Result<()> {
    node.stop()?;
    node.boot()?;
    let addr = node.addr();
    wait_for("slot B committed", Duration::from_secs(60), || {
        let v = osctl(c, &["-n", &addr, "-o", "json", "version"]).ok().ok()?.json().ok()?;
        (slot(&v, "b")["state"] == "committed" && slot(&v, "b")["booted"] == true).then_some(())
    })
    .with_context(|| node.log())
}

/// B failed its trial; A runs.
fn fell_back_to_a(v: &serde_json::Value) {
    assert_eq!((slot(v, "b")["state"].as_str(), slot(v, "a")["booted"].as_bool()), (Some("failed"), Some(true)), "{v}");
}

#[test]
fn host_node_refuses_bad_bundles_then_upgrades_commits_falls_back_and_rolls_back() -> anyhow::Result<()> {
    let Setup { op, work, image, good, mut node } = setup()?;
    let c = op.osctlconfig();
    let addr = node.addr();
    let version = || osctl(&c, &["-n", &addr, "-o", "json", "version"]).ok()?.json();

    let v = version()?;
    assert_eq!((slot(&v, "a")["state"].as_str(), slot(&v, "a")["booted"].as_bool()), (Some("committed"), Some(true)));
    assert_eq!(slot(&v, "b")["state"], "committed", "a fresh image has B as its fallback: {v}");

    // Every bad bundle is refused, saying why, with nothing on disk changed.
    let before = snapshot(&image)?;
    for (name, bundle, want) in bad_bundles(&op, &good, work.path())? {
        let r = osctl(&c, &["-n", &addr, "upgrade", "--bundle", bundle.to_str().context("utf-8")?]);
        assert_ne!(r.code, 0, "{name}: {r:?}");
        assert!(r.stderr.contains(want), "{name}: expected {want:?} in {r:?}");
        assert_eq!(snapshot(&image)?, before, "{name}: the disk changed");
    }
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("upgrade refused"), "{events}");

    // The good one, staged: written to B, armed, not booted yet.
    let r = osctl(&c, &["-n", &addr, "-o", "json", "upgrade", "--bundle", good.to_str().context("utf-8")?, "--stage"])
        .ok()?
        .json()?;
    assert_eq!(
        (r["slot"].as_str(), r["version"].as_str(), r["rebooting"].as_bool()),
        (Some("b"), Some("0.2.0"), Some(false))
    );
    let (header, _) = split_bundle(&op, &good)?;
    // It resumed where the truncated upload of the same bundle stopped
    // (counting only the parts sent: slot A may hold some already).
    let local = r["local_parts"].as_array().cloned().unwrap_or_default();
    let sent: u64 =
        header.manifest.parts.iter().filter(|p| !local.contains(&p.name.as_str().into())).map(|p| p.size).sum();
    assert_eq!(r["resumed_from"].as_u64(), Some(sent - 4096), "{r}");
    let root = header.manifest.part("root").context("root part")?;
    let disk = init::disk::Disk::open(&image)?;
    assert_eq!(disk.hash("ROOT-B", root.size)?, root.sha256, "slot B holds the bundle's root");
    assert_eq!(disk.hash("ROOT-A", disk.partition("ROOT-A")?.size)?, before.0, "slot A is untouched");
    let v = version()?;
    assert_eq!(slot(&v, "b")["state"], "trial pending", "{v}");
    assert_eq!((slot(&v, "b")["next_boot"].as_bool(), slot(&v, "b")["version"].as_str()), (Some(true), Some("0.2.0")));

    // "Reboot": B boots on trial and is committed once healthy.
    node.stop()?;
    node.boot()?;
    let committed = wait_for("slot B committed", Duration::from_secs(60), || {
        let v = version().ok()?;
        (slot(&v, "b")["state"] == "committed" && slot(&v, "b")["booted"] == true).then_some(v)
    })
    .with_context(|| node.log())?;
    assert_eq!(committed[0]["config_version"], 1, "the config survives the upgrade");
    wait_event(|| osctl(&c, &["-n", &addr, "events"]), "slot b is healthy: committed")?;

    // Rollback: A (committed) boots again; init restarts itself as a host
    // node's reboot.
    let r = osctl(&c, &["-n", &addr, "rollback"]).ok()?;
    assert!(r.stdout.contains("slot a boots next"), "{r:?}");
    wait_for("the rollback to slot A", Duration::from_secs(60), || {
        let v = version().ok()?;
        (slot(&v, "a")["booted"] == true).then_some(())
    })
    .with_context(|| node.log())?;

    // A trial that never becomes healthy (init killed before it commits):
    // the next start falls back to the committed slot and says so.
    let again = work.path().join("plinth-0.3.0.osb");
    build_bundle(&op, &again, "0.3.0")?;
    osctl(&c, &["-n", &addr, "upgrade", "--bundle", again.to_str().context("utf-8")?, "--stage"]).ok()?;
    node.stop()?;
    node.boot()?; // B on trial (its one try used)…
    let v = version()?;
    assert_eq!((slot(&v, "b")["state"].as_str(), slot(&v, "b")["booted"].as_bool()), (Some("on trial"), Some(true)));
    node.kill()?; // …and it dies before it is healthy.
    node.boot()?;
    fell_back_to_a(&version()?);
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("slot b failed its trial boot"), "{events}");

    // Nothing to roll back to: B failed.
    let r = osctl(&c, &["-n", &addr, "rollback"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no committed boot entry"), "{r:?}");

    // A trial whose service crash-loops: the health gate gives up, init
    // reboots, and the next start is on A again.
    let crashing = work.path().join("plinth-0.4.0.osb");
    build_bundle(&op, &crashing, "0.4.0")?;
    osctl(&c, &["-n", &addr, "upgrade", "--bundle", crashing.to_str().context("utf-8")?, "--stage"]).ok()?;
    node.stop()?;
    node.extra_args = ["--apid", "/bin/false", "--health-timeout", "5s"].map(String::from).to_vec();
    node.spawn()?;
    wait_for("the health gate to give up and init to restart", Duration::from_secs(60), || {
        let log = node.log();
        let at = log.find(
            "slot b did not become healthy in 5s (a service is not running, or restarted): rebooting to fall back",
        )?;
        log[at..].contains("loaded").then_some(())
    })
    .with_context(|| node.log())?;
    node.stop()?;
    node.extra_args.clear();
    node.boot()?;
    fell_back_to_a(&version()?);
    Ok(())
}

#[test]
fn a_security_floor_refuses_older_bundles_and_rollbacks_whatever_the_client_asks() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let Setup { op, work, image, good: built, mut node } = setup()?;
    let path = |name: &str| work.path().join(name);
    // Security versions: the image's, the fix's, and one in between.
    let (image_sec, fixed_sec, between) =
        (machinery::SECURITY_VERSION, machinery::SECURITY_VERSION + 2, machinery::SECURITY_VERSION + 1);
    let fixed = path("plinth-0.2.0-fixed.osb");
    resigned(&op, &built, &fixed, "0.2.0", fixed_sec)?;
    let c = op.osctlconfig();
    let addr = node.addr();
    let version = || osctl(&c, &["-n", &addr, "-o", "json", "version"]).ok()?.json();
    let upgrade = |bundle: &Path, extra: &[&str]| {
        let mut args = vec!["-n", addr.as_str(), "upgrade", "--bundle", bundle.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        osctl(&c, &args)
    };

    // The release that fixes a vulnerability is installed and committed:
    // its security version is the node's floor from now on.
    upgrade(&fixed, &["--stage"]).ok()?;
    reboot_into_committed_b(&mut node, &c)?;
    // init raises the floor right after it commits the slot, so `version`
    // may show B committed a moment before the floor is written.
    let floor = node.state.path().join("security-floor");
    wait_for("the security floor raised", Duration::from_secs(10), || {
        (std::fs::read_to_string(&floor).ok()?.trim() == fixed_sec.to_string()).then_some(())
    })
    .with_context(|| node.log())?;
    assert_eq!(std::fs::metadata(&floor)?.permissions().mode() & 0o777, 0o600, "the floor is root's alone");

    // Slot A still holds the vulnerable release: no rollback into it.
    let before = snapshot(&image)?;
    let r = osctl(&c, &["-n", &addr, "rollback"]);
    assert_ne!(r.code, 0, "{r:?}");
    let want = format!("security version {image_sec}, below this node's security floor {fixed_sec}");
    assert!(r.stderr.contains(&want), "expected {want:?} in {r:?}");
    assert_eq!(snapshot(&image)?, before, "a refused rollback changes nothing");
    assert_eq!(slot(&version()?, "b")["next_boot"], true);

    // A bundle below the floor is refused, --allow-downgrade or not.
    let vulnerable = path("plinth-0.1.5-vulnerable.osb");
    resigned(&op, &built, &vulnerable, "0.1.5", between)?;
    let want = format!("version 0.1.5 at security version {between}, below this node's security floor {fixed_sec}");
    for extra in [&[][..], &["--allow-downgrade"][..]] {
        let r = upgrade(&vulnerable, extra);
        assert_ne!(r.code, 0, "{extra:?}: {r:?}");
        assert!(r.stderr.contains(&want), "{extra:?}: expected {want:?} in {r:?}");
        assert_eq!(snapshot(&image)?, before, "{extra:?}: the disk changed");
    }

    // An older version (than the running one, host mode's build) at the
    // floor is a downgrade the operator may ask for.
    let older = path("plinth-0.0.1-fixed.osb");
    resigned(&op, &built, &older, "0.0.1", fixed_sec)?;
    let r = upgrade(&older, &["--stage"]);
    assert!(r.stderr.contains("pass --allow-downgrade"), "{r:?}");
    upgrade(&older, &["--stage", "--allow-downgrade"]).ok()?;
    assert_eq!(slot(&version()?, "a")["state"], "trial pending");
    Ok(())
}

#[test]
fn an_upgrade_sends_only_the_parts_the_running_slot_lacks() -> anyhow::Result<()> {
    let Setup { op, work, image, good, mut node } = setup()?;
    let c = op.osctlconfig();
    let addr = node.addr();
    let version = || osctl(&c, &["-n", &addr, "-o", "json", "version"]).ok()?.json();
    let upgrade = |bundle: &Path| -> anyhow::Result<serde_json::Value> {
        let bundle = bundle.to_str().context("utf-8")?;
        osctl(&c, &["-n", &addr, "-o", "json", "upgrade", "--bundle", bundle, "--stage"]).ok()?.json()
    };
    let (header, payload) = split_bundle(&op, &good)?;
    let header_len = header.encode().len() as u64;

    // The first upgrade carries what slot A lacks; slot B then runs it.
    upgrade(&good)?;
    reboot_into_committed_b(&mut node, &c)?;

    // A rebuild of what runs (same parts, another version): only the
    // signed header goes over the wire; the node copies both parts from
    // slot B into slot A and checks them against the signed manifest.
    let rebuild = work.path().join("plinth-0.2.1.osb");
    resigned(&op, &good, &rebuild, "0.2.1", machinery::SECURITY_VERSION)?;
    let r = upgrade(&rebuild)?;
    assert_eq!(r["local_parts"], serde_json::json!(["uki", "root"]), "{r}");
    assert_eq!(r["sent_bytes"].as_u64(), Some(header_len), "{r}");
    assert!(r["summary"].as_str().unwrap_or_default().contains("copied from slot b"), "{r}");
    let root = header.manifest.part("root").context("root part")?;
    let disk = init::disk::Disk::open(&image)?;
    assert_eq!(disk.hash("ROOT-A", root.size)?, root.sha256, "slot A holds the bundle's root");
    assert_eq!(slot(&version()?, "a")["state"], "trial pending");

    // One part changed (the root): only that part is sent.
    let uki_len = header.manifest.part("uki").context("uki part")?.size as usize;
    let mut changed = payload.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x5a;
    let mut m = header.manifest.clone();
    m.version = "0.2.2".into();
    let sha = init::disk::hex_sha;
    m.parts.iter_mut().find(|p| p.name == "root").context("root part")?.sha256 = sha(&changed[uki_len..]);
    let key = machinery::signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    let one = work.path().join("plinth-0.2.2.osb");
    let signed = machinery::bundle::Header::sign(m, &key).encode();
    std::fs::write(&one, [signed.clone(), changed.clone()].concat())?;
    let r = upgrade(&one)?;
    assert_eq!(r["local_parts"], serde_json::json!(["uki"]), "{r}");
    assert_eq!(r["sent_bytes"].as_u64(), Some((signed.len() + changed.len() - uki_len) as u64), "{r}");
    assert_eq!(disk.hash("ROOT-A", root.size)?, sha(&changed[uki_len..]), "slot A holds the new root");
    Ok(())
}
