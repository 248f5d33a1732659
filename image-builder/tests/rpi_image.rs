//! Builds a real `rpi4` image and bundle (Debian's arm64 kernel and
//! `raspi-firmware`, tiny static aarch64 programs in place of ours) and
//! checks their bytes against the Raspberry Pi documentation's rules
//! (`autoboot.txt`, `config.txt`, boot partitions; IMAGE.md, "Raspberry
//! Pi"):
//!
//! - GPT, partitions 1–3 FAT with the basic-data type (the boot loader
//!   accepts basic data and ESP); `boot_partition` counts from 1;
//! - `autoboot.txt` on partition 1, under 512 bytes, `[all]` with
//!   `tryboot_a_b=1` and `boot_partition=2`, a `[tryboot]` section;
//! - each slot's partition FAT32 (older `start4.elf` assumes FAT32 in a
//!   GPT), holding `start4.elf` + `fixup4.dat` (a matched pair), the
//!   board's DTB, `config.txt` with `arm_64bit=1`, `kernel=` naming an
//!   arm64 Image, `initramfs … followkernel` naming the initramfs,
//!   `cmdline=` naming a one-line `cmdline.txt` with the slot;
//! - every root carries the build time; the bundle carries `boot` + `root`.
//!
//! Needs the image tools and Debian's archive (or ~/.cache/plinth); skips
//! without them, except with CI=true, where it fails.

use std::io::{Cursor, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use image_builder::BuildOptions;
use machinery::layout::{self, Slot};
use machinery::slots::{self, BootState};

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn tools_ready() -> bool {
    let gone: Vec<&str> = ["mksquashfs", "unsquashfs", "zstd", "apt-get", "dpkg-deb", "readelf"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if gone.is_empty() {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI: missing {gone:?}: run scripts/setup-debian.sh");
    eprintln!("skipped: missing {gone:?} (scripts/setup-debian.sh installs them)");
    false
}

/// The smallest static aarch64 program (exit(0)): an ELF header, one
/// loadable segment, three instructions. Stands in for our binaries.
fn aarch64_exit0() -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&0xb7u16.to_le_bytes()); // EM_AARCH64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    let entry = 0x400000u64 + 120;
    e[24..32].copy_from_slice(&entry.to_le_bytes());
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
    e[52..54].copy_from_slice(&64u16.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    e[ph + 16..ph + 24].copy_from_slice(&0x400000u64.to_le_bytes());
    e[ph + 24..ph + 32].copy_from_slice(&0x400000u64.to_le_bytes());
    let code: [u32; 3] = [0xd2800ba8, 0xd2800000, 0xd4000001]; // mov x8,#93; mov x0,#0; svc #0
    for c in code {
        e.extend_from_slice(&c.to_le_bytes());
    }
    let len = e.len() as u64;
    e[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes());
    e[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes());
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e
}

fn fixture_bins(dir: &Path) -> PathBuf {
    let bin = dir.join("bin-aarch64");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["plinth-init", "apid", "orchestrator", "plinth-pause"] {
        std::fs::write(bin.join(b), aarch64_exit0()).unwrap();
    }
    bin
}

fn fat(bytes: Vec<u8>) -> fatfs::FileSystem<Cursor<Vec<u8>>> {
    fatfs::FileSystem::new(Cursor::new(bytes), fatfs::FsOptions::new()).unwrap()
}

fn fat_file(fs: &fatfs::FileSystem<Cursor<Vec<u8>>>, path: &str) -> Vec<u8> {
    let mut v = Vec::new();
    fs.root_dir().open_file(path).unwrap_or_else(|e| panic!("{path}: {e}")).read_to_end(&mut v).unwrap();
    v
}

/// The files a slot's `config.txt` names, checked against the partition.
fn check_slot(fs: &fatfs::FileSystem<Cursor<Vec<u8>>>, slot: Slot, console: &str) {
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32, "{}: FAT32", slot.boot_label());
    for f in ["start4.elf", "fixup4.dat"] {
        assert!(fat_file(fs, f).len() > 1000, "{f}: the firmware pair");
    }
    assert_eq!(&fat_file(fs, "bcm2711-rpi-4-b.dtb")[..4], &[0xd0, 0x0d, 0xfe, 0xed], "a flattened device tree");
    let config = String::from_utf8(fat_file(fs, "config.txt")).unwrap();
    let lines: Vec<&str> = config.lines().map(str::trim).collect();
    assert!(lines.contains(&"arm_64bit=1"), "{config}");
    assert!(lines.contains(&"enable_uart=1"), "{config}");
    let value =
        |key: &str| lines.iter().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {config}"));
    let kernel = fat_file(fs, value("kernel="));
    assert_eq!(&kernel[0x38..0x3c], b"ARM\x64", "kernel= names an arm64 Image");
    let initramfs: Vec<&str> = value("initramfs ").split_whitespace().collect();
    assert_eq!(initramfs.len(), 2, "initramfs FILE followkernel (no '='): {config}");
    assert_eq!(initramfs[1], "followkernel");
    assert_eq!(&fat_file(fs, initramfs[0])[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd initramfs");
    let cmdline = String::from_utf8(fat_file(fs, value("cmdline="))).unwrap();
    assert_eq!(cmdline.lines().count(), 1, "cmdline.txt is one line: {cmdline:?}");
    assert_eq!(Slot::from_cmdline(&cmdline), Some(slot), "{cmdline}");
    assert!(cmdline.contains(&format!("console={console}")), "{cmdline}");
}

#[test]
fn the_rpi4_image_and_bundle_follow_the_raspberry_pi_boot_rules() {
    if !tools_ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let key = machinery::signing::generate_signing_key().unwrap();
    std::fs::write(w.join("ops.pub"), machinery::signing::verifying_key_to_pem(&key.verifying_key()).unwrap()).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let before = now();
    let opts = BuildOptions {
        board: "rpi4".into(),
        board_dir: workspace.join("board-configs"),
        trust_key: w.join("ops.pub"),
        bin_dir: fixture_bins(w),
        out: w.join("rpi4.img"),
        cache_dir: image_builder::default_cache_dir(),
        version: machinery::VERSION.to_string(),
        security_version: machinery::SECURITY_VERSION,
        preload_images: Vec::new(),
        secure_boot: None,
    };
    let board = image_builder::load_board("rpi4", &opts.board_dir).unwrap();
    image_builder::build(&opts).unwrap();
    let after = now();

    // GPT: the contract's seven partitions, in order; 1–3 FAT (basic data).
    let disk = gpt::GptConfig::new().open(&opts.out).unwrap();
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let parts: Vec<(u32, gpt::partition::Partition)> = disk.partitions().iter().map(|(n, p)| (*n, p.clone())).collect();
    let labels: Vec<(u32, &str)> = parts.iter().map(|(n, p)| (*n, p.name.as_str())).collect();
    assert_eq!(
        labels,
        [
            (1, layout::RPI_AUTOBOOT),
            (layout::RPI_BOOT_PARTITIONS.0, layout::BOOT_A),
            (layout::RPI_BOOT_PARTITIONS.1, layout::BOOT_B),
            (4, layout::ROOT_A),
            (5, layout::ROOT_B),
            (6, layout::STATE),
            (7, layout::EPHEMERAL)
        ]
    );
    assert!(parts[..3].iter().all(|(_, p)| p.part_type_guid == gpt::partition_types::BASIC));
    let mut img = std::fs::File::open(&opts.out).unwrap();
    let mut partition = |i: usize| {
        let p = &parts[i].1;
        let mut buf = vec![0; p.bytes_len(lb).unwrap() as usize];
        img.seek(SeekFrom::Start(p.bytes_start(lb).unwrap())).unwrap();
        img.read_exact(&mut buf).unwrap();
        buf
    };

    // STATE and EPHEMERAL carry the fresh-install marker, as on UEFI boards.
    for (i, label) in [(5, layout::STATE), (6, layout::EPHEMERAL)] {
        let head = partition(i);
        assert_eq!(layout::read_fresh_marker(&head[..layout::FRESH_MARKER_LEN], label), layout::Marker::Fresh);
        assert!(head[layout::FRESH_MARKER_LEN..1 << 20].iter().all(|&b| b == 0), "{label}");
    }

    // autoboot.txt: on partition 1, under 512 bytes, tryboot A/B to BOOT-A.
    let boot = fat(partition(0));
    let autoboot = String::from_utf8(fat_file(&boot, "autoboot.txt")).unwrap();
    // The firmware reads at most 512 bytes; Plinth's is one whole sector,
    // so a commit rewrites it in place.
    assert_eq!(autoboot.len(), slots::rpi::AUTOBOOT_LEN, "autoboot.txt is exactly one 512-byte sector");
    assert_eq!(autoboot, slots::rpi::autoboot_txt(&BootState::fresh(), Slot::A, layout::RPI_BOOT_PARTITIONS));
    let all: Vec<&str> = autoboot.split("[tryboot]").next().unwrap().lines().collect();
    assert_eq!(all, ["[all]", "tryboot_a_b=1", "boot_partition=2"]);
    assert_eq!(slots::rpi::parse(&autoboot, layout::RPI_BOOT_PARTITIONS), Some((Slot::A, Slot::A)));

    // Each slot's boot partition.
    check_slot(&fat(partition(1)), Slot::A, &board.console);
    check_slot(&fat(partition(2)), Slot::B, &board.console);

    // The root carries the build time (init's clock floor).
    let root = w.join("root");
    let sq = w.join("root.sq");
    std::fs::write(&sq, partition(3)).unwrap();
    let out = Command::new("unsquashfs").arg("-q").arg("-d").arg(&root).arg(&sq).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let time = root.join(layout::ROOT_BUILD_TIME.trim_start_matches('/'));
    let stamped = std::fs::read_to_string(time).unwrap();
    let secs: u64 = stamped.strip_suffix('\n').unwrap().parse().unwrap();
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => assert_eq!(secs.to_string(), v),
        Err(_) => assert!((before..=after).contains(&secs), "{secs} is the build's time"),
    }
    assert!(root.join("lib/ld-linux-aarch64.so.1").is_file(), "arm64 runtime libraries");

    // The bundle: boot (slot A's partition, trimmed) + root.
    let bundle_opts = BuildOptions { out: w.join("rpi4.osb"), ..opts.clone() };
    let m = image_builder::bundle(&bundle_opts, &key).unwrap();
    let names: Vec<&str> = m.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, [machinery::bundle::PART_BOOT, machinery::bundle::PART_ROOT]);
    let bytes = std::fs::read(&bundle_opts.out).unwrap();
    // The header by hand: init's parser learns the `boot` part with the
    // Pi back-end (piinit's change to the required parts).
    assert_eq!(&bytes[..machinery::bundle::MAGIC.len()], machinery::bundle::MAGIC);
    let m_at = machinery::bundle::MAGIC.len();
    let m_len = u32::from_be_bytes(bytes[m_at..m_at + 4].try_into().unwrap()) as usize;
    let at = m_at + 4 + m_len + 96;
    let boot_len = m.parts[0].size as usize;
    assert!(boot_len as u64 <= board.partitions.efi << 20, "fits BOOT-A/B");
    let mut part = bytes[at..at + boot_len].to_vec();
    part.resize((board.partitions.efi << 20) as usize, 0);
    check_slot(&fat(part), Slot::A, &board.console);
}
