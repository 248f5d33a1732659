//! Verified boot and damaged storage in QEMU (issue 16, items 16 and 6):
//! an image signed with the operator's own Secure Boot key boots under
//! OVMF with Secure Boot on and its root verified by dm-verity; a UKI with
//! one byte changed is refused by the firmware, and a root with one byte
//! changed is refused by dm-verity. A configured node whose stored config
//! lost a bit, then whose STATE superblock was zeroed, between boots comes
//! back configured each time, answering authenticated osctl, without a
//! reboot.

use std::time::Duration;

use anyhow::Context as _;

use plinth_qemu::{Vm, VmOptions};
use plinth_tests::cluster::tail;
use plinth_tests::{Operator, build_options, osctl, wait_for};

const BOOT: Duration = Duration::from_secs(240);

/// Flips one bit of the byte at `offset` of `file`.
fn flip(file: &std::path::Path, offset: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    f.write_all_at(&[b[0] ^ 0x01], offset)?;
    Ok(f.sync_all()?)
}

/// A copy of the image (sparse), to tamper with.
fn copy(image: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("cp").arg("--sparse=always").arg(image).arg(to).output()?;
    anyhow::ensure!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn secure_boot_refuses_a_tampered_uki_and_dm_verity_a_tampered_root() -> anyhow::Result<()> {
    let _one = plinth_qemu::one_at_a_time();
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let keys = image_builder::secureboot::generate(&w.join("secureboot"), "Plinth test operator")?;
    let vars = w.join("secureboot").join(image_builder::secureboot::OVMF_VARS_FILE);
    let image = w.join("plinth.img");
    let mut opts = build_options(&op, &image, machinery::VERSION)?;
    opts.secure_boot = Some(keys);
    let manifest = image_builder::build(&opts).context("building the signed image")?;
    let word = manifest.verity.clone().context("the manifest's verity word")?;
    let place = |label: &str| manifest.partitions.iter().find(|p| p.label == label).map(|p| (p.offset, p.size));
    let (efi_at, efi_len) = place(machinery::layout::EFI).context("EFI partition")?;
    let (root_a, _) = place(machinery::layout::ROOT_A).context("ROOT-A partition")?;

    // (1) Signed, Secure Boot on: the node boots to its API, on a root
    // dm-verity checks, and the kernel saw Secure Boot enforced.
    let mut vm = Vm::start_secure_boot(
        VmOptions { image: image.clone(), name: "sb".into(), memory_mib: 256, dir: w.join("vm-sb") },
        &vars,
    )?;
    vm.wait_for_api(BOOT)?;
    let v = osctl(&op.osctlconfig(), &["-n", &vm.api_addr(), "--insecure", "-o", "json", "version"]).ok()?.json()?;
    assert_eq!(v[0]["mode"], "maintenance", "{v}");
    let log = vm.serial_log();
    assert!(log.contains("Secure boot enabled"), "the kernel reports Secure Boot on:\n{}", tail(&log));
    assert!(log.contains("ROOT-A: verified by dm-verity"), "{}", tail(&log));
    assert!(!log.contains("plinth.slot="), "a signed UKI names no slot; init asked systemd-boot:\n{}", tail(&log));
    vm.kill();
    drop(vm);

    // (2) One byte of the UKIs' signed command line changed (the root
    // hash, as an attacker would to boot a root of their own): the
    // firmware refuses to start them, and no kernel runs.
    let bad_uki = w.join("bad-uki.img");
    copy(&image, &bad_uki)?;
    let efi = {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; efi_len as usize];
        std::fs::File::open(&bad_uki)?.read_exact_at(&mut buf, efi_at)?;
        buf
    };
    // The root hash's first digit, in every UKI on the partition.
    let hash_at = word.find(':').context("verity word")? + 1;
    let hits: Vec<usize> =
        efi.windows(word.len()).enumerate().filter(|(_, w)| *w == word.as_bytes()).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 2, "one UKI per slot on the EFI partition");
    for i in hits {
        flip(&bad_uki, efi_at + (i + hash_at) as u64)?;
    }
    let mut vm = Vm::start_secure_boot(
        VmOptions { image: bad_uki, name: "sb-bad-uki".into(), memory_mib: 256, dir: w.join("vm-bad-uki") },
        &vars,
    )?;
    // systemd-boot's LoadImage of the entry fails: the firmware found no
    // db certificate whose signature matches the changed bytes.
    let refused = vm.wait_for_serial("plinth-2-a.efi: Access Denied", Duration::from_secs(120));
    let log = vm.serial_log();
    vm.kill();
    drop(vm);
    refused.with_context(|| format!("systemd-boot reports the firmware's refusal:\n{}", tail(&log)))?;
    assert!(!log.contains("Linux version"), "no kernel started:\n{}", tail(&log));

    // (3) One byte of ROOT-A changed (the squashfs superblock's mkfs time,
    // which squashfs itself never checks): dm-verity refuses the read, init
    // says so naming the partition, and the node does not come up on it.
    let bad_root = w.join("bad-root.img");
    copy(&image, &bad_root)?;
    flip(&bad_root, root_a + 8)?;
    let mut vm = Vm::start_secure_boot(
        VmOptions { image: bad_root, name: "sb-bad-root".into(), memory_mib: 256, dir: w.join("vm-bad-root") },
        &vars,
    )?;
    let refused = vm.wait_for_serial("is refused by dm-verity", BOOT);
    let log = vm.serial_log();
    vm.kill();
    drop(vm);
    refused.with_context(|| format!("init reports the refused root:\n{}", tail(&log)))?;
    assert!(log.contains("ROOT-A (/dev/vda2) is refused by dm-verity"), "{}", tail(&log));
    assert!(log.contains("data block 0 is corrupted"), "the kernel names the block:\n{}", tail(&log));
    assert!(!log.contains("slot a: root image"), "the boot did not go on:\n{}", tail(&log));
    Ok(())
}

/// Runs a program to completion; its stdout.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program).args(args).output().with_context(|| program.to_string())?;
    anyhow::ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fills `len` bytes at `offset` of a qcow2 disk (the VM's overlay) with `byte`.
fn fill_qcow2(disk: &std::path::Path, offset: u64, len: u64, byte: u8) -> anyhow::Result<()> {
    let disk = disk.to_str().context("utf-8")?;
    run("qemu-io", &["-f", "qcow2", "-c", &format!("write -P {byte} {offset} {len}"), disk]).map(drop)
}

#[test]
fn a_flipped_bit_in_the_stored_config_or_a_zeroed_state_superblock_leaves_a_configured_node() -> anyhow::Result<()> {
    let _one = plinth_qemu::one_at_a_time();
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = w.join("plinth.img");
    let manifest = image_builder::build(&build_options(&op, &image, machinery::VERSION)?)?;
    let state_at = manifest
        .partitions
        .iter()
        .find(|p| p.label == machinery::layout::STATE)
        .map(|p| p.offset)
        .context("STATE partition")?;
    let mut vm = Vm::start(VmOptions { image, name: "state".into(), memory_mib: 256, dir: w.join("vm") })?;
    vm.wait_for_api(BOOT)?;
    let (c, addr) = (op.osctlconfig(), vm.api_addr());
    let cfg = op.gen_dhcp_config("node.toml", "snode")?;
    osctl(&c, &["-n", &addr, "--insecure", "apply-config", "-f", cfg.to_str().context("utf-8")?]).ok()?;
    let configured = || {
        let v = osctl(&c, &["-n", &addr, "-o", "json", "version"]).json().ok()?;
        (v[0]["mode"] == "configured").then_some(v)
    };
    wait_for("the node configured", Duration::from_secs(60), configured)?;
    osctl(&c, &["-n", &addr, "shutdown"]).ok()?;
    vm.wait_exit(Duration::from_secs(120))?;
    let overlay = vm.dir.join("disk.qcow2");

    // (1) One bit of config/config.signed flipped on the disk between two boots
    // (found through a raw copy: debugfs maps the file to its block).
    let raw = w.join("disk.raw");
    run(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", overlay.to_str().context("utf-8")?, raw.to_str().context("utf-8")?],
    )?;
    let fs = format!("{}?offset={state_at}", raw.display());
    let block: u64 = run("debugfs", &["-R", "bmap /config/config.signed 0", &fs])?.trim().parse()?;
    let block_size: u64 = run("dumpe2fs", &["-h", &fs])?
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .context("dumpe2fs: block size")?
        .trim()
        .parse()?;
    let at = state_at + block * block_size + 100;
    let byte = {
        use std::os::unix::fs::FileExt as _;
        let mut b = [0u8; 1];
        std::fs::File::open(&raw)?.read_exact_at(&mut b, at)?;
        b[0]
    };
    std::fs::remove_file(&raw)?;
    fill_qcow2(&overlay, at, 1, byte ^ 0x01)?;
    vm.boot()?;
    let v = wait_for("the node back, configured", BOOT, configured).with_context(|| tail(&vm.serial_log()))?;
    assert_eq!(v[0]["hostname"], "snode", "{v}");
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("the stored config cannot be used"), "{events}");
    assert!(events.contains("running the last good config (version 1) instead"), "{events}");
    let log = vm.serial_log();
    assert_eq!(log.matches("Plinth 0.1.0 starting").count(), 1, "no reboot:\n{}", tail(&log));
    osctl(&c, &["-n", &addr, "shutdown"]).ok()?;
    vm.wait_exit(Duration::from_secs(120))?;

    // (2) Zeros over the primary ext4 superblock (1 KiB at byte 1024 of
    // STATE): repaired from a backup superblock (never formatted), the
    // config kept, authenticated osctl answered; no reboot on the way (the
    // serial log starts again with each QEMU run).
    fill_qcow2(&overlay, state_at + 1024, 1024, 0)?;
    vm.boot()?;
    let v = wait_for("the node back, configured", BOOT, configured).with_context(|| tail(&vm.serial_log()))?;
    assert_eq!(v[0]["hostname"], "snode", "{v}");
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("STATE: repaired"), "{events}");
    let log = vm.serial_log();
    assert_eq!(log.matches("Plinth 0.1.0 starting").count(), 1, "no reboot:\n{}", tail(&log));
    assert!(!log.contains("created a filesystem"), "STATE was not formatted:\n{}", tail(&log));
    vm.kill();
    Ok(())
}
