//! arm64 images with the Raspberry Pi's layout under the harness-as-
//! firmware: the slot choice from `autoboot.txt` (normal and tryboot
//! boots) on a real `arm64-virt` image. The image tools and Debian's
//! archive (or ~/.cache/plinth) are needed; without them the test skips,
//! except with CI=true, where it fails. Booting arm64 images with the real
//! aarch64 binaries is in the plinth-tests crate: the whole journey under
//! `-M virt` (tests/journey.rs) and the `rpi4` image under `-M raspi4b`
//! (tests/raspi4b.rs).

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use machinery::layout::{self, Slot};
use machinery::slots;
use plinth_qemu::{Machine, firmware};

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn ready(tools: &[&str]) -> bool {
    let gone: Vec<&&str> = tools.iter().filter(|t| !on_path(t)).collect();
    if gone.is_empty() {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI: missing {gone:?}: run scripts/setup-debian.sh");
    eprintln!("skipped: missing {gone:?}");
    false
}

/// exit(0) for aarch64: stands in for our binaries where nothing runs them.
fn aarch64_exit0(dir: &Path) -> PathBuf {
    let mut e = vec![0u8; 120];
    e[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    e[16] = 2;
    e[18] = 0xb7;
    e[20] = 1;
    e[24..32].copy_from_slice(&(0x400000u64 + 120).to_le_bytes());
    e[32] = 64;
    e[52] = 64;
    e[54] = 56;
    e[56] = 1;
    e[64] = 1;
    e[68] = 5;
    e[80..88].copy_from_slice(&0x400000u64.to_le_bytes());
    e[88..96].copy_from_slice(&0x400000u64.to_le_bytes());
    for c in [0xd2800ba8u32, 0xd2800000, 0xd4000001] {
        e.extend_from_slice(&c.to_le_bytes());
    }
    e[96..104].copy_from_slice(&132u64.to_le_bytes());
    e[104..112].copy_from_slice(&132u64.to_le_bytes());
    e[112..120].copy_from_slice(&0x1000u64.to_le_bytes());
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["plinth-init", "apid", "orchestrator", "plinth-pause"] {
        std::fs::write(bin.join(b), &e).unwrap();
    }
    bin
}

fn build(dir: &Path, board: &str, bin_dir: PathBuf) -> PathBuf {
    let key = machinery::signing::generate_signing_key().unwrap();
    std::fs::write(dir.join("ops.pub"), machinery::signing::verifying_key_to_pem(&key.verifying_key()).unwrap())
        .unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let opts = image_builder::BuildOptions {
        board: board.into(),
        board_dir: workspace.join("board-configs"),
        trust_key: dir.join("ops.pub"),
        bin_dir,
        out: dir.join(format!("{board}.img")),
        cache_dir: image_builder::default_cache_dir(),
        version: machinery::VERSION.to_string(),
        security_version: machinery::SECURITY_VERSION,
        preload_images: Vec::new(),
        secure_boot: None,
    };
    image_builder::build(&opts).unwrap();
    opts.out
}

/// Rewrites `autoboot.txt` in partition 1 of a raw disk (as init does).
fn write_autoboot(disk: &Path, text: &str) {
    let gpt = gpt::GptConfig::new().open(disk).unwrap();
    let p = gpt.partitions().get(&1).unwrap().clone();
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let (start, len) = (p.bytes_start(lb).unwrap(), p.bytes_len(lb).unwrap());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(disk).unwrap();
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, start).unwrap();
    let mut cur = std::io::Cursor::new(buf);
    {
        let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().create_file("autoboot.txt").unwrap();
        f.truncate().unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
    file.write_all_at(cur.get_ref(), start).unwrap();
}

#[test]
fn the_harness_boots_the_slot_autoboot_txt_names() {
    if !ready(&["mksquashfs", "zstd", "apt-get", "dpkg-deb", "readelf"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let image = build(w, "arm64-virt", aarch64_exit0(w));
    assert_eq!(Machine::for_image(&image), Machine::Virt);
    let out = w.join("boot");
    std::fs::create_dir_all(&out).unwrap();
    let vmlinuz_of = |slot: Slot, files: &firmware::BootFiles| {
        assert_eq!(files.slot, slot);
        assert_eq!(Slot::from_cmdline(&files.cmdline), Some(slot), "{}", files.cmdline);
        assert!(files.cmdline.starts_with("console=ttyAMA0 "), "{}", files.cmdline);
        assert!(files.dtb.is_none(), "virt: QEMU's own device tree");
        let kernel = std::fs::read(&files.kernel).unwrap();
        assert_eq!(&kernel[0x38..0x3c], b"ARM\x64");
        assert_eq!(&std::fs::read(files.initrd.as_ref().unwrap()).unwrap()[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    };
    // A fresh image boots A, also on a tryboot (nothing on trial).
    vmlinuz_of(Slot::A, &firmware::load(&image, false, None, &out).unwrap());
    vmlinuz_of(Slot::A, &firmware::load(&image, true, None, &out).unwrap());
    // B armed for a trial: a normal boot stays on A, a tryboot boots B.
    let parts = layout::RPI_BOOT_PARTITIONS;
    let trial = slots::rpi::Autoboot { committed: Slot::A, tryboot: Slot::B };
    write_autoboot(&image, &trial.encode(parts));
    vmlinuz_of(Slot::A, &firmware::load(&image, false, None, &out).unwrap());
    vmlinuz_of(Slot::B, &firmware::load(&image, true, None, &out).unwrap());
    // B committed: every boot is B's.
    write_autoboot(&image, "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=3\n");
    vmlinuz_of(Slot::B, &firmware::load(&image, false, None, &out).unwrap());
    // A partition 1 that names no slot is an error naming the disk.
    write_autoboot(&image, "[all]\n");
    let e = firmware::load(&image, false, None, &out).unwrap_err().to_string();
    assert!(e.contains("autoboot.txt names no boot partition"), "{e}");
}
