//! A/B upgrades on a host-mode node whose boot disk has the Raspberry Pi
//! layout (BOOT with `autoboot.txt`, BOOT-A/B, ROOT-A/B, STATE, EPHEMERAL),
//! built here with image-builder's FAT and GPT functions. init plays the
//! Pi firmware at each start: the `[tryboot]` partition once after a
//! tryboot reboot (a flag file beside the image), else `[all]`'s, and the
//! slot its `cmdline.txt` names. Proves: upgrade A→B with a trial and a
//! commit by rewriting `autoboot.txt` in place, rollback, and trials cut
//! off by power cuts relaunched until their tries are spent, then failed.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use image_builder::disk::{Fat, Kind, Part, fat_image, write_gpt};
use machinery::bundle::{self, BundleManifest, BundlePart, Header};
use machinery::layout::{self, Slot};
use machinery::slots::rpi;
use plinth_tests::{Operator, configured_node_on, osctl, slot, wait_event, wait_for};

fn sha(data: &[u8]) -> String {
    init::disk::hex_sha(data)
}

/// A slot's boot partition as image-builder makes it: built for slot a.
fn boot_fat(version: &str) -> anyhow::Result<Vec<u8>> {
    let cmdline = b"console=ttyAMA0 plinth.slot=a rootwait\n";
    let config = format!("# plinth {version}\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n");
    let files: [(&str, &[u8]); 2] = [("cmdline.txt", cmdline), ("config.txt", config.as_bytes())];
    Ok(fat_image(4, "BOOT-A", Fat::Fat32, &files)?)
}

fn root(version: &str) -> Vec<u8> {
    let mut r = format!("plinth root {version}\n").into_bytes();
    r.resize(3 << 20, version.len() as u8);
    r
}

/// The Pi disk: both slots hold 0.1.0 (slot b's cmdline says b).
fn pi_disk(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let autoboot = rpi::autoboot_txt(&machinery::slots::BootState::fresh(), Slot::A, layout::RPI_BOOT_PARTITIONS);
    let (boot, slot_boot, root_img) = (dir.join("boot.fat"), dir.join("boot-a.fat"), dir.join("root.img"));
    std::fs::write(&boot, fat_image(1, "BOOT", Fat::Small, &[("autoboot.txt", autoboot.as_bytes())])?)?;
    std::fs::write(&slot_boot, boot_fat("0.1.0")?)?;
    std::fs::write(&root_img, root("0.1.0"))?;
    let out = dir.join("pi.img");
    let p = |label, kind, size_mib, content| Part { label, kind, size_mib, content };
    write_gpt(
        &out,
        &[
            p(layout::RPI_AUTOBOOT, Kind::Fat, 2, Some(&boot)),
            p(layout::BOOT_A, Kind::Fat, 8, Some(&slot_boot)),
            p(layout::BOOT_B, Kind::Fat, 8, Some(&slot_boot)),
            p(layout::ROOT_A, Kind::Linux, 8, Some(&root_img)),
            p(layout::ROOT_B, Kind::Linux, 8, Some(&root_img)),
            p(layout::STATE, Kind::Linux, 1, None),
            p(layout::EPHEMERAL, Kind::Linux, 1, None),
        ],
    )?;
    init::disk::Disk::open(&out)?.set_cmdline_slot(layout::BOOT_B, Slot::B)?;
    Ok(out)
}

/// A signed Pi bundle (`boot` + `root`), for host mode's default board.
fn pi_bundle(op: &Operator, out: &Path, version: &str) -> anyhow::Result<()> {
    let (boot, root) = (boot_fat(version)?, root(version));
    let part = |name: &str, data: &[u8]| BundlePart { name: name.into(), size: data.len() as u64, sha256: sha(data) };
    let manifest = BundleManifest {
        version: version.into(),
        board: "qemu-x86_64".into(),
        arch: "arm64".into(),
        kernel_version: "6.1".into(),
        security_version: machinery::SECURITY_VERSION,
        parts: vec![part(bundle::PART_BOOT, &boot), part(bundle::PART_ROOT, &root)],
    };
    let key = machinery::signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    std::fs::write(out, [Header::sign(manifest, &key).encode(), boot, root].concat())?;
    Ok(())
}

/// `autoboot.txt` as the firmware reads it: (committed, tryboot).
fn autoboot(image: &Path) -> anyhow::Result<(Slot, Slot)> {
    let text = init::disk::Disk::open(image)?.read_fat_file(layout::RPI_AUTOBOOT, layout::RPI_AUTOBOOT_TXT)?;
    assert_eq!(text.len(), rpi::AUTOBOOT_LEN, "autoboot.txt keeps its size");
    rpi::parse(&String::from_utf8(text)?, layout::RPI_BOOT_PARTITIONS).context("autoboot.txt parses")
}

#[test]
fn pi_layout_upgrades_commits_rolls_back_and_counts_cut_off_trials() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = pi_disk(work.path())?;
    let (mut node, _) = configured_node_on(&op, Some(&image))?;
    let c = op.osctlconfig();
    let addr = node.addr();
    let version = || osctl(&c, &["-n", &addr, "-o", "json", "version"]).ok()?.json();
    let booted = |v: &serde_json::Value, s: &str| slot(v, s)["booted"] == true;
    let v = version()?;
    assert!(booted(&v, "a") && slot(&v, "b")["state"] == "committed", "{v}");

    // Upgrade: B's partitions written, armed, tryboot reboot, trial, commit.
    let b2 = work.path().join("plinth-0.2.0.osb");
    pi_bundle(&op, &b2, "0.2.0")?;
    let r = osctl(&c, &["-n", &addr, "-o", "json", "upgrade", "--bundle", b2.to_str().context("utf-8")?]).ok()?;
    assert_eq!(r.json()?["slot"], "b", "{r:?}");
    wait_for("slot b booted on trial and committed", Duration::from_secs(90), || {
        let v = version().ok()?;
        (booted(&v, "b") && slot(&v, "b")["state"] == "committed").then_some(())
    })
    .with_context(|| node.log())?;
    wait_event(|| osctl(&c, &["-n", &addr, "events"]), "slot b is healthy: committed")?;
    assert_eq!(autoboot(&image)?, (Slot::B, Slot::B), "committed in autoboot.txt");
    let disk = init::disk::Disk::open(&image)?;
    assert_eq!(disk.hash(layout::ROOT_B, 3 << 20)?, sha(&root("0.2.0")));
    let cmdline = String::from_utf8(disk.read_fat_file(layout::BOOT_B, layout::RPI_CMDLINE_TXT)?)?;
    assert_eq!(Slot::from_cmdline(&cmdline), Some(Slot::B), "{cmdline}");
    let config = String::from_utf8(disk.read_fat_file(layout::BOOT_B, "config.txt")?)?;
    assert!(config.contains("0.2.0"), "{config}");
    assert_eq!(disk.hash(layout::ROOT_A, 3 << 20)?, sha(&root("0.1.0")), "slot a untouched");

    // Rollback: autoboot.txt names A again; a plain reboot boots it.
    osctl(&c, &["-n", &addr, "rollback"]).ok()?;
    wait_for("the rollback to slot a", Duration::from_secs(60), || booted(&version().ok()?, "a").then_some(()))
        .with_context(|| node.log())?;
    assert_eq!(autoboot(&image)?, (Slot::A, Slot::A));

    // A staged upgrade, launched by a reboot; each trial boot is cut off by
    // a power cut (SIGKILL, and the firmware's flag is gone): the committed
    // slot launches it again until its tries are spent.
    let b3 = work.path().join("plinth-0.3.0.osb");
    pi_bundle(&op, &b3, "0.3.0")?;
    osctl(&c, &["-n", &addr, "upgrade", "--stage", "--bundle", b3.to_str().context("utf-8")?]).ok()?;
    assert_eq!(autoboot(&image)?, (Slot::A, Slot::B), "armed");
    assert_eq!(slot(&version()?, "b")["state"], "trial pending");
    let record = node.state.path().join(init::upgrade::TRIAL_RECORD);
    osctl(&c, &["-n", &addr, "reboot"]).ok()?;
    for n in 1..=rpi::TRIAL_TRIES {
        wait_for(&format!("trial boot {n} of slot b"), Duration::from_secs(60), || {
            let v = version().ok()?;
            (booted(&v, "b") && slot(&v, "b")["state"] == "on trial").then_some(())
        })
        .with_context(|| node.log())?;
        let left = rpi::TRIAL_TRIES - n;
        assert_eq!(std::fs::read_to_string(&record)?, format!("b trial {left} {n}\n"), "counted once, before the boot");
        node.kill()?;
        let _ = std::fs::remove_file(init::loader::tryboot_flag(&image));
        node.boot()?;
    }
    wait_for("slot b failed, slot a running", Duration::from_secs(30), || {
        let v = version().ok()?;
        (booted(&v, "a") && slot(&v, "b")["state"] == "failed").then_some(())
    })
    .with_context(|| node.log())?;
    assert_eq!(std::fs::read_to_string(&record)?, format!("b failed {}\n", rpi::TRIAL_TRIES));
    assert_eq!(autoboot(&image)?, (Slot::A, Slot::A), "disarmed");
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("slot b failed its trial boot"), "{events}");
    // Earlier starts' events are in their logs (the journal is per start).
    let log = node.log();
    assert_eq!(log.matches("launching it again").count(), rpi::TRIAL_TRIES as usize - 1, "{log}");
    Ok(())
}
