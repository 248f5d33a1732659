//! The boot chain under TCG, without Plinth's init: OVMF → systemd-boot →
//! slot A's UKI (kernel + our cpio initramfs) → a tiny static PID 1
//! (`fixtures/marker_init.rs`) that loads the board's modules, finds the
//! partition labelled ROOT-A in sysfs, prints a marker and powers off; then
//! the same with slot B's entry made the default (ROOT-B).
//! The real init is proved by `tests/tests/image.rs`; this test pins down
//! what image-builder and the qemu crate own, and how long the chain takes.
//!
//! Needs QEMU, OVMF, the image tools and network access to Debian's archive
//! (or the kernel in ~/.cache/plinth): scripts/setup-debian.sh. Without
//! them it skips, except with CI=true, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_qemu::{Disk, OVMF_CODE, Vm, VmOptions};

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// `None` when everything is there; otherwise what is missing.
fn missing() -> Option<String> {
    let tools = ["qemu-system-x86_64", "qemu-img", "objcopy", "mksquashfs", "rustc", "apt-get", "dpkg-deb"];
    let files = [OVMF_CODE, image_builder::uki::STUB_X64];
    let gone: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !on_path(t))
        .chain(files.iter().copied().filter(|f| !Path::new(f).exists()))
        .collect();
    (!gone.is_empty()).then(|| gone.join(", "))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Compiles the fixture init, statically, as both binaries an image needs.
fn fixture_bins(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/marker_init.rs");
    let out = Command::new("rustc")
        .args(["--edition", "2024", "-O", "-C", "target-feature=+crt-static", "-C", "strip=symbols", "-o"])
        .arg(bin.join("plinth-init"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "rustc {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    std::fs::copy(bin.join("plinth-init"), bin.join("apid")).unwrap();
    std::fs::copy(bin.join("plinth-init"), bin.join("orchestrator")).unwrap();
    std::fs::copy(bin.join("plinth-init"), bin.join("plinth-pause")).unwrap();
    bin
}

fn trust_key(dir: &Path) -> PathBuf {
    let key = machinery::signing::generate_signing_key().unwrap();
    let pem = machinery::signing::verifying_key_to_pem(&key.verifying_key()).unwrap();
    let path = dir.join("ops.pub");
    std::fs::write(&path, pem).unwrap();
    path
}

/// Whether QEMU, OVMF and the image tools are here; with CI=true their
/// absence is a failure.
fn tools_ready() -> bool {
    let Some(what) = missing() else { return true };
    assert!(std::env::var("CI").is_err(), "CI: missing {what}: run scripts/setup-debian.sh");
    eprintln!("skipped: missing {what} (scripts/setup-debian.sh installs them)");
    false
}

/// Build options for `board` with the fixture binaries, into `image`.
fn fixture_options(work: &Path, board: &str, image: &Path) -> image_builder::BuildOptions {
    image_builder::BuildOptions {
        board: board.into(),
        board_dir: workspace().join("board-configs"),
        trust_key: trust_key(work),
        bin_dir: fixture_bins(work),
        out: image.to_path_buf(),
        cache_dir: image_builder::default_cache_dir(),
        version: machinery::VERSION.to_string(),
        security_version: machinery::SECURITY_VERSION,
        preload_images: Vec::new(),
        secure_boot: None,
    }
}

#[test]
fn uefi_systemd_boot_and_each_slots_uki_reach_pid1_which_finds_its_root() {
    if !tools_ready() {
        return;
    }
    let _one = plinth_qemu::one_at_a_time();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("plinth.img");
    let opts = fixture_options(work.path(), "qemu-x86_64", &image);
    let t = Instant::now();
    let manifest = image_builder::build(&opts).unwrap();
    let build = t.elapsed();

    let t = Instant::now();
    let mut vm =
        Vm::start(VmOptions { image, name: "chain".into(), memory_mib: 256, dir: work.path().join("vm") }).unwrap();
    vm.wait_for_serial("fixture-init: PLINTH-", Duration::from_secs(180)).unwrap();
    let boot = t.elapsed();
    let log = vm.serial_log();
    assert!(log.contains("PLINTH-FIXTURE-OK PARTNAME=ROOT-A is vda2"), "{log}");
    let modules = opts_modules(&opts);
    assert!(log.contains(&format!("fixture-init: {modules} modules loaded")), "{log}");
    assert!(!log.contains("finit_module"), "a module failed to load: {log}");
    assert!(log.contains("fixture-init: cmdline: console=ttyS0 plinth.slot=a"), "{log}");
    // The fixture powers off: QEMU exits by itself.
    vm.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(log.contains("reboot: Power down") || vm.serial_log().contains("reboot: Power down"));

    let size = manifest.part("image").unwrap().size;
    let uptime = log.split("uptime ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?");
    eprintln!(
        "image {} MiB (root {} KiB, initramfs {} KiB) built in {:.1} s; marker after {:.1} s wall under TCG \
         (guest uptime {uptime} s)",
        size >> 20,
        manifest.part("root.squashfs").unwrap().size >> 10,
        manifest.part("initramfs").unwrap().size >> 10,
        build.as_secs_f64(),
        boot.as_secs_f64()
    );

    // Make slot B the preferred entry (as a rollback from A would) and boot
    // a fresh VM: systemd-boot must pick it by the entries' names alone.
    prefer_slot_b(&opts.out);
    let mut vm = Vm::start(VmOptions {
        image: opts.out.clone(),
        name: "chain-b".into(),
        memory_mib: 256,
        dir: work.path().join("vm-b"),
    })
    .unwrap();
    vm.wait_for_serial("fixture-init: PLINTH-", Duration::from_secs(180)).unwrap();
    let log = vm.serial_log();
    assert!(log.contains("PLINTH-FIXTURE-OK PARTNAME=ROOT-B is vda3"), "{log}");
    assert!(log.contains("fixture-init: cmdline: console=ttyS0 plinth.slot=b"), "{log}");
    vm.wait_exit(Duration::from_secs(30)).unwrap();
}

/// Renames the image's boot entries so that B comes first, through the
/// same code init uses on a node.
fn prefer_slot_b(image: &Path) {
    use machinery::layout::Slot;
    let disk = init::disk::Disk::open(image).unwrap();
    let efi = disk.efi().unwrap();
    let old = efi.state().unwrap();
    let mut new = old;
    assert_eq!(new.rollback(Slot::A), Ok(Slot::B));
    efi.apply(&old, &new).unwrap();
    assert_eq!(efi.state().unwrap().next_boot(), Some(Slot::B));
    efi.close().unwrap();
}

/// The generic x86-64 board's kernel finds its root on the disks real
/// machines boot from: NVMe, SATA (AHCI) and a USB stick.
#[test]
fn the_x86_64_uefi_board_boots_from_nvme_sata_and_usb() {
    if !tools_ready() {
        return;
    }
    let _one = plinth_qemu::one_at_a_time();
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("x86.img");
    let opts = fixture_options(work.path(), "x86_64-uefi", &image);
    image_builder::build(&opts).unwrap();
    for (disk, dev) in [(Disk::Nvme, "nvme0n1p2"), (Disk::Ahci, "sda2"), (Disk::Usb, "sda2")] {
        let t = Instant::now();
        let name = format!("{disk:?}").to_lowercase();
        let vm_opts =
            VmOptions { image: image.clone(), name: name.clone(), memory_mib: 256, dir: work.path().join(&name) };
        let mut vm = Vm::start_with(vm_opts, disk).unwrap();
        vm.wait_for_serial("fixture-init: PLINTH-", Duration::from_secs(180)).unwrap();
        let log = vm.serial_log();
        assert!(log.contains(&format!("PLINTH-FIXTURE-OK PARTNAME=ROOT-A is {dev}")), "{disk:?}: {log}");
        // Only crc32c-intel may fail: TCG's CPU has no SSE4.2.
        let failed: Vec<&str> = log.lines().filter(|l| l.contains("fixture-init: finit_module")).collect();
        assert!(failed.iter().all(|l| l.contains("crc32c-intel")), "{disk:?}: {failed:?}");
        vm.wait_exit(Duration::from_secs(30)).unwrap();
        eprintln!("{disk:?}: ROOT-A is {dev}, marker after {:.1} s", t.elapsed().as_secs_f64());
    }
}

/// How many modules the image's initramfs loads (the board's, with the
/// runtime's and their dependencies).
fn opts_modules(opts: &image_builder::BuildOptions) -> usize {
    let board = image_builder::load_board(&opts.board, &opts.board_dir).unwrap();
    let k = image_builder::kernel::fetch(&board.kernel, board.arch.debian(), &opts.cache_dir.join("kernel")).unwrap();
    image_builder::module_order(&board, &k).unwrap().len()
}
