//! `osctl image flash` end to end, through the binary: onto a regular file
//! standing in for the device (`--device-is-file`), compared byte for byte;
//! compressed images; damaged and truncated ones; a device too small; the
//! seed config; and the refusal of the disk this machine runs from.

use std::io::{Cursor, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use machinery::layout;
use machinery::signing::{self, Purpose};

const MIB: u64 = 1 << 20;
/// What the "device" holds before flashing: not zeros, so a write shows.
const OLD: u8 = 0xa5;

fn osctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osctl"))
        .args(args)
        .env("OSCTLCONFIG", dir.join("no-osctlconfig"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A GPT disk image of `mib` MiB: a 4 MiB FAT `label` partition holding a
/// file, then a data partition of varied bytes, the rest zeros.
fn gpt_image(path: &Path, mib: u64, label: &str) -> Vec<u8> {
    let file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    file.set_len(mib * MIB).unwrap();
    let mut file = file;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(mib * MIB / 512 - 1).unwrap())
        .overwrite_lba0(&mut file)
        .unwrap();
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, None)
        .unwrap();
    table.add_partition(label, 4 * MIB, gpt::partition_types::EFI, 0, Some(MIB / 512)).unwrap();
    table.add_partition(layout::ROOT_A, 3 * MIB, gpt::partition_types::LINUX_FS, 0, Some(MIB / 512)).unwrap();
    let at = |name: &str| table.partitions().values().find(|p| p.name == name).unwrap().first_lba * 512;
    let (fat_at, root_at) = (at(label), at(layout::ROOT_A));
    table.write().unwrap();
    let mut fat = Cursor::new(vec![0u8; (4 * MIB) as usize]);
    fatfs::format_volume(&mut fat, fatfs::FormatVolumeOptions::new()).unwrap();
    {
        let fs = fatfs::FileSystem::new(&mut fat, fatfs::FsOptions::new()).unwrap();
        fs.root_dir().create_file("autoboot.txt").unwrap().write_all(b"[all]\ntryboot_a_b=1\n").unwrap();
        fs.unmount().unwrap();
    }
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.write_all_at(fat.get_ref(), fat_at).unwrap();
    let root: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 131 % 251) as u8).collect();
    f.write_all_at(&root, root_at).unwrap();
    std::fs::read(path).unwrap()
}

/// A "device": a file of `mib` MiB holding old data.
fn device(path: &Path, mib: u64) -> PathBuf {
    std::fs::write(path, vec![OLD; (mib * MIB) as usize]).unwrap();
    path.to_path_buf()
}

fn zstd_file(data: &[u8], out: &Path) {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    e.set_pledged_src_size(Some(data.len() as u64)).unwrap();
    e.write_all(data).unwrap();
    std::fs::write(out, e.finish().unwrap()).unwrap();
}

fn xz_file(data: &[u8], out: &Path) {
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
    w.write_all(data).unwrap();
    std::fs::write(out, w.finish().unwrap()).unwrap();
}

fn flash(dir: &Path, image: &Path, dev: &Path, extra: &[&str]) -> Output {
    let mut args =
        vec!["image", "flash", "--image", image.to_str().unwrap(), "--device", dev.to_str().unwrap(), "--yes"];
    args.push("--device-is-file");
    args.extend_from_slice(extra);
    osctl(dir, &args)
}

fn assert_flashed(dev: &Path, image: &[u8], dev_mib: u64) {
    let back = std::fs::read(dev).unwrap();
    assert_eq!(back.len() as u64, dev_mib * MIB, "the device keeps its size");
    assert!(back[..image.len()] == *image, "the image is on the device byte for byte");
    assert!(back[image.len()..].iter().all(|&b| b == OLD), "nothing past the image is touched");
}

fn untouched(dev: &Path) -> bool {
    std::fs::read(dev).unwrap().iter().all(|&b| b == OLD)
}

#[test]
fn raw_zstd_and_xz_images_land_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = gpt_image(&d.join("p.img"), 12, layout::EFI);
    zstd_file(&image, &d.join("p.img.zst"));
    xz_file(&image, &d.join("p.img.xz"));
    for name in ["p.img", "p.img.zst", "p.img.xz"] {
        let dev = device(&d.join(format!("dev-{name}")), 16);
        let out = flash(d, &d.join(name), &dev, &[]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("read back and verified"), "{}", text(&out));
        assert_flashed(&dev, &image, 16);
    }
    // JSON for scripts.
    let dev = device(&d.join("dev-json"), 16);
    let out = flash(d, &d.join("p.img.zst"), &dev, &["-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["bytes"].as_u64(), v["format"].as_str()), (Some(12 * MIB), Some("zstd")));
    let sha = machinery::bundle::hex(&<sha2::Sha256 as sha2::Digest>::digest(&image));
    assert_eq!(v["sha256"].as_str(), Some(sha.as_str()));
}

#[test]
fn truncated_images_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = gpt_image(&d.join("p.img"), 12, layout::EFI);
    zstd_file(&image, &d.join("full.img.zst"));
    xz_file(&image, &d.join("full.img.xz"));
    for ext in ["zst", "xz"] {
        let full = std::fs::read(d.join(format!("full.img.{ext}"))).unwrap();
        let cut = d.join(format!("cut.img.{ext}"));
        std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
        let dev = device(&d.join(format!("dev-{ext}")), 16);
        let out = flash(d, &cut, &dev, &[]);
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        assert!(text(&out).contains("truncated") && text(&out).contains("nothing was written"), "{}", text(&out));
        assert!(untouched(&dev));
    }
}

#[test]
fn a_damaged_stream_is_caught_while_writing_and_the_card_said_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = gpt_image(&d.join("p.img"), 12, layout::EFI);
    zstd_file(&image, &d.join("p.img.zst"));
    xz_file(&image, &d.join("p.img.xz"));
    for ext in ["zst", "xz"] {
        let mut bytes = std::fs::read(d.join(format!("p.img.{ext}"))).unwrap();
        // Damage the compressed data in the middle; the framing stays whole.
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 16] {
            *b ^= 0x5a;
        }
        let bad = d.join(format!("bad.img.{ext}"));
        std::fs::write(&bad, &bytes).unwrap();
        let dev = device(&d.join(format!("dev-{ext}")), 16);
        let out = flash(d, &bad, &dev, &[]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(said.contains("damaged") && said.contains("is unusable"), "{said}");
        // The partition tables are erased: the card boots nothing.
        let back = std::fs::read(&dev).unwrap();
        assert!(said.contains("partition table is erased") == back[..MIB as usize].iter().all(|&b| b == 0), "{said}");
    }
}

#[test]
fn a_device_too_small_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gpt_image(&d.join("p.img"), 12, layout::EFI);
    let dev = device(&d.join("dev"), 8);
    let out = flash(d, &d.join("p.img"), &dev, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let want = format!("too small: {} needs 12 MiB, {} has 8 MiB", d.join("p.img").display(), dev.display());
    assert!(text(&out).contains(&want), "{}", text(&out));
    assert!(untouched(&dev));
}

#[test]
fn the_wrong_board_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gpt_image(&d.join("p.img"), 12, layout::EFI);
    let dev = device(&d.join("dev"), 16);
    // No manifest: the board cannot be told.
    let out = flash(d, &d.join("p.img"), &dev, &["--board", "rpi4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("cannot tell which board"), "{}", text(&out));
    std::fs::write(d.join("p.img.manifest.json"), r#"{"board":"rpi5","parts":[]}"#).unwrap();
    let out = flash(d, &d.join("p.img"), &dev, &["--board", "rpi4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("built for rpi5, not rpi4"), "{}", text(&out));
    assert!(untouched(&dev));
    assert!(flash(d, &d.join("p.img"), &dev, &["--board", "rpi5"]).status.success());
}

fn config_text(version: u64) -> String {
    let ca = machinery::pki::generate_ca("t").unwrap();
    format!(
        "version = {version}\n[machine]\nhostname = \"pi1\"\n[cluster]\nname = \"demo\"\nrole = \"controlplane\"\n[api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
        ca.cert_pem, ca.key_pem
    )
}

/// The seed config on the flashed device's first FAT partition.
fn seed_on(dev: &Path) -> Option<Vec<u8>> {
    let table = gpt::GptConfig::new().writable(false).open(dev).unwrap();
    let p = table.partitions().values().find(|p| p.name == layout::RPI_AUTOBOOT || p.name == layout::EFI).unwrap();
    let mut bytes = std::fs::read(dev).unwrap();
    let start = (p.first_lba * 512) as usize;
    let fat = Cursor::new(&mut bytes[start..start + (4 * MIB) as usize]);
    let fs = fatfs::FileSystem::new(fat, fatfs::FsOptions::new()).unwrap();
    let mut out = Vec::new();
    fs.root_dir().open_file(layout::SEED_CONFIG.trim_start_matches('/')).ok()?.read_to_end(&mut out).unwrap();
    Some(out)
}

#[test]
fn a_config_is_signed_and_seeded_onto_the_boot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gpt_image(&d.join("pi.img"), 12, layout::RPI_AUTOBOOT);
    zstd_file(&std::fs::read(d.join("pi.img")).unwrap(), &d.join("pi.img.zst"));
    let key = signing::generate_signing_key().unwrap();
    std::fs::write(d.join("ops.key"), signing::signing_key_to_pem(&key).unwrap()).unwrap();
    let toml = config_text(1);
    std::fs::write(d.join("node.toml"), &toml).unwrap();

    // TOML, signed here with --key.
    let dev = device(&d.join("dev"), 16);
    let out = flash(
        d,
        &d.join("pi.img.zst"),
        &dev,
        &["--config", d.join("node.toml").to_str().unwrap(), "--key", d.join("ops.key").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("config version 1 for pi1 put at BOOT:/plinth/config.signed"), "{}", text(&out));
    let env = seed_on(&dev).unwrap();
    let (bytes, sig) = signing::envelope_decode(&env).unwrap();
    assert_eq!(bytes, toml.as_bytes());
    signing::verify(Purpose::Config, &key.verifying_key(), &bytes, &sig).unwrap();

    // An envelope from `osctl sign`, as it is.
    let signed = signing::envelope_encode(toml.as_bytes(), &signing::sign(Purpose::Config, &key, toml.as_bytes()));
    std::fs::write(d.join("node.toml.signed"), &signed).unwrap();
    let dev = device(&d.join("dev2"), 16);
    let out = flash(d, &d.join("pi.img"), &dev, &["--config", d.join("node.toml.signed").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(seed_on(&dev).unwrap(), signed);
}

#[test]
fn a_bad_config_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gpt_image(&d.join("p.img"), 12, layout::EFI);
    std::fs::write(d.join("bad.toml"), config_text(1).replace("controlplane", "boss")).unwrap();
    let dev = device(&d.join("dev"), 16);
    let out = flash(d, &d.join("p.img"), &dev, &["--config", d.join("bad.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("bad.toml:") && text(&out).contains("role"), "{}", text(&out));
    assert!(untouched(&dev));
    // A TOML config with no key to sign it: nothing written either.
    std::fs::write(d.join("ok.toml"), config_text(1)).unwrap();
    let out = flash(d, &d.join("p.img"), &dev, &["--config", d.join("ok.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no signing key"), "{}", text(&out));
    assert!(untouched(&dev));
}

#[test]
fn without_yes_a_script_is_told_to_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gpt_image(&d.join("p.img"), 12, layout::EFI);
    let dev = device(&d.join("dev"), 16);
    let out = osctl(
        d,
        &[
            "image",
            "flash",
            "--image",
            d.join("p.img").to_str().unwrap(),
            "--device",
            dev.to_str().unwrap(),
            "--device-is-file",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    assert!(untouched(&dev));
}

/// A zstd file whose one frame declares `size` bytes and holds none: its
/// size is read from the header, so it is "bigger" than any disk here.
fn huge_zstd(path: &Path, size: u64) {
    let mut b = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0x01, 0x00, 0x00]);
    std::fs::write(path, b).unwrap();
}

/// The disk this machine runs from is refused for what it is. Safe by
/// construction: the image claims 1 TiB, more than the disk holds, so
/// even a broken system-disk check would end in "too small", not a write.
#[test]
fn the_disk_this_machine_runs_from_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = osctl::flash::Host::real();
    let Some(root) = host.uses().into_iter().find(|u| u.system) else {
        eprintln!("/ is not on a block device here (a container?): nothing to check");
        return;
    };
    let dev = format!("/dev/{}", root.disk);
    if !Path::new(&dev).exists() {
        eprintln!("{dev} has no device node here: nothing to check");
        return;
    }
    huge_zstd(&d.join("huge.img.zst"), 1 << 40);
    let out = osctl(
        d,
        &["image", "flash", "--image", d.join("huge.img.zst").to_str().unwrap(), "--device", &dev, "--yes", "--force"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains(&format!("refusing {dev}: it holds the running system")), "{}", text(&out));
    // And a regular file cannot stand in for it.
    let out = osctl(
        d,
        &[
            "image",
            "flash",
            "--image",
            d.join("huge.img.zst").to_str().unwrap(),
            "--device",
            &dev,
            "--yes",
            "--device-is-file",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn list_shows_the_system_disk_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = osctl(dir.path(), &["image", "flash", "--list", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host = osctl::flash::Host::real();
    if let Some(root) = host.uses().into_iter().find(|u| u.system) {
        let disk = v.as_array().unwrap().iter().find(|d| d["device"] == format!("/dev/{}", root.disk)).unwrap();
        assert_eq!((&disk["candidate"], &disk["system"]), (&serde_json::json!(false), &serde_json::json!(true)));
        assert!(disk["in_use"].to_string().contains("/ is on"), "{disk}");
    }
}
