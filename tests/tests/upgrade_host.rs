//! A/B upgrades on a host-mode node whose boot disk is a real Plinth image
//! file (GPT, FAT EFI partition, squashfs roots): init plays systemd-boot's
//! part at each start (pick the entry, count a try down), so the whole
//! state machine runs in seconds. QEMU proves the same on a real boot
//! loader (tests/upgrade_qemu.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use machinery::bundle::{BundleManifest, Header};
use plinth_tests::{Operator, build_bundle, build_image, configured_node_on, osctl, wait_for};

/// What must not change when a bundle is refused: both roots and the boot
/// entries.
fn snapshot(image: &Path) -> anyhow::Result<(String, String, Vec<String>)> {
    let disk = init::disk::Disk::open(image)?;
    let len = disk.partition("ROOT-A")?.size;
    let mut entries = disk.efi()?.entries()?;
    entries.sort();
    Ok((disk.hash("ROOT-A", len)?, disk.hash("ROOT-B", len)?, entries))
}

/// The good bundle split into its signed header and payload.
fn split(op: &Operator, bundle: &Path) -> anyhow::Result<(Header, Vec<u8>)> {
    let bytes = std::fs::read(bundle)?;
    let pem = std::fs::read_to_string(op.path("ops.pub"))?;
    let trusted = machinery::signing::verifying_key_from_pem(&pem)?;
    let (h, used) = Header::parse(&bytes, &trusted)?.context("a whole header")?;
    Ok((h, bytes[used..].to_vec()))
}

/// Bad bundles made from a good one, each with what the refusal must say.
fn bad_bundles(op: &Operator, good: &Path, dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf, &'static str)>> {
    let (header, payload) = split(op, good)?;
    let key = machinery::signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    let resign = |f: &dyn Fn(&mut BundleManifest)| {
        let mut m = header.manifest.clone();
        f(&mut m);
        Header::sign(m, &key)
    };
    let with = |h: &Header, payload: &[u8]| [h.encode(), payload.to_vec()].concat();
    let mut unsigned = header.clone();
    unsigned.signature = vec![0; machinery::signing::DETACHED_LEN];
    let other = machinery::signing::generate_signing_key()?;
    let foreign = Header::sign(header.manifest.clone(), &other);
    let mut corrupted = payload.clone();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0x40;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unsigned", with(&unsigned, &payload), "not signed"),
        ("signed by another key", with(&foreign, &payload), "only trusts key"),
        ("corrupted in transit", with(&header, &corrupted), "corrupted in transit"),
        // Kept on the node: the good upload below resumes from it.
        ("truncated", with(&header, &payload[..payload.len() - 4096]), "run the upgrade again to resume"),
        ("for another board", with(&resign(&|m| m.board = "rpi4".into()), &payload), "is for board rpi4"),
        ("a downgrade", with(&resign(&|m| m.version = "0.0.1".into()), &payload), "--allow-downgrade"),
        ("not a bundle", b"PK\x03\x04 a zip file".to_vec(), "not a Plinth upgrade bundle"),
    ];
    let mut out = Vec::new();
    for (i, (name, bytes, want)) in cases.into_iter().enumerate() {
        let p = dir.join(format!("bad-{i}.osb"));
        std::fs::write(&p, bytes)?;
        out.push((name, p, want));
    }
    Ok(out)
}

fn slot<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v[0]["slots"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).unwrap_or(&serde_json::Value::Null)
}

#[test]
fn host_node_refuses_bad_bundles_then_upgrades_commits_falls_back_and_rolls_back() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    build_image(&op, &image)?;
    let good = work.path().join("plinth-0.2.0.osb");
    build_bundle(&op, &good, "0.2.0")?;
    let (mut node, _) = configured_node_on(&op, Some(&image))?;
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
    let (header, payload) = split(&op, &good)?;
    // It resumed where the truncated upload of the same bundle stopped.
    assert_eq!(r["resumed_from"].as_u64(), Some(payload.len() as u64 - 4096), "{r}");
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
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("slot b is healthy: committed"), "{events}");

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
    let v = version()?;
    assert_eq!(
        (slot(&v, "b")["state"].as_str(), slot(&v, "a")["booted"].as_bool()),
        (Some("failed"), Some(true)),
        "{v}"
    );
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("slot b failed its trial boot"), "{events}");

    // Nothing to roll back to: B failed.
    let r = osctl(&c, &["-n", &addr, "rollback"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no committed boot entry"), "{r:?}");
    Ok(())
}
