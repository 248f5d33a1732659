//! Builds a real qemu-x86_64 image (Debian's kernel, fixture binaries in
//! place of plinth-init and apid) and reads every layer of it back: the
//! GPT, the FAT EFI partition, both UKIs and their sections, the cpio
//! initramfs inside them, both squashfs roots and the manifests.
//!
//! Needs the image tools and Debian's archive (or the kernel in
//! ~/.cache/plinth): scripts/setup-debian.sh. Without them it skips, except
//! with CI=true, where it fails.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use image_builder::{BuildOptions, Manifest, cpio, uki};
use machinery::layout::{self, Slot};

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn missing() -> Option<String> {
    let gone: Vec<&str> =
        ["objcopy", "mksquashfs", "unsquashfs", "zstd", "rustc", "apt-get", "dpkg-deb", "veritysetup"]
            .into_iter()
            .filter(|t| !on_path(t))
            .chain([uki::STUB_X64].into_iter().filter(|f| !Path::new(f).exists()))
            .collect();
    (!gone.is_empty()).then(|| gone.join(", "))
}

/// A static program standing in for plinth-init and apid.
fn fixture_bins(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let src = dir.join("main.rs");
    std::fs::write(&src, "fn main() { println!(\"fixture\"); }\n").unwrap();
    let out = Command::new("rustc")
        .args(["-O", "-C", "target-feature=+crt-static", "-C", "strip=symbols", "-o"])
        .arg(bin.join("plinth-init"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(bin.join("plinth-init"), bin.join("apid")).unwrap();
    std::fs::copy(bin.join("plinth-init"), bin.join("orchestrator")).unwrap();
    std::fs::copy(bin.join("plinth-init"), bin.join("plinth-pause")).unwrap();
    bin
}

fn slice(img: &mut std::fs::File, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0; len as usize];
    img.seek(SeekFrom::Start(offset)).unwrap();
    img.read_exact(&mut buf).unwrap();
    buf
}

fn fat_file(fs: &fatfs::FileSystem<std::io::Cursor<Vec<u8>>>, path: &str) -> Vec<u8> {
    let mut v = Vec::new();
    fs.root_dir().open_file(path).unwrap_or_else(|e| panic!("{path}: {e}")).read_to_end(&mut v).unwrap();
    v
}

fn unzstd(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feed = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    feed.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    image_builder::kernel::hex(&sha2::Sha256::digest(b))
}

/// Whether the image tools are here; with CI=true their absence is a
/// failure.
fn tools_ready() -> bool {
    let Some(what) = missing() else { return true };
    assert!(std::env::var("CI").is_err(), "CI: missing {what}: run scripts/setup-debian.sh");
    eprintln!("skipped: missing {what} (scripts/setup-debian.sh installs them)");
    false
}

#[test]
fn every_layer_of_a_built_image_reads_back() {
    if !tools_ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let key = machinery::signing::generate_signing_key().unwrap();
    let pem = machinery::signing::verifying_key_to_pem(&key.verifying_key()).unwrap();
    std::fs::write(w.join("ops.pub"), &pem).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cache = image_builder::default_cache_dir();
    let opts = BuildOptions {
        board: "qemu-x86_64".into(),
        board_dir: workspace.join("board-configs"),
        trust_key: w.join("ops.pub"),
        bin_dir: fixture_bins(w),
        out: w.join("plinth.img"),
        cache_dir: cache,
        version: machinery::VERSION.to_string(),
        security_version: machinery::SECURITY_VERSION,
        preload_images: Vec::new(),
        secure_boot: None,
    };
    let built = image_builder::build(&opts).unwrap();
    let board = image_builder::load_board(&opts.board, &opts.board_dir).unwrap();
    let init_bytes = std::fs::read(opts.bin_dir.join("plinth-init")).unwrap();

    // The manifest next to the image is the one returned, and matches it.
    let text = std::fs::read_to_string(image_builder::manifest_path(&opts.out)).unwrap();
    let manifest: Manifest = serde_json::from_str(&text).unwrap();
    let img_sum = image_builder::kernel::sha256_file(&opts.out).unwrap();
    assert_eq!(manifest.part("image").unwrap().sha256, img_sum);
    assert_eq!(built.part("image").unwrap().sha256, img_sum);

    // GPT: the five labels in order, 1 MiB aligned, the board's sizes.
    let disk = gpt::GptConfig::new().open(&opts.out).unwrap();
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let parts: Vec<_> = disk.partitions().values().cloned().collect();
    let labels: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(labels, [layout::EFI, layout::ROOT_A, layout::ROOT_B, layout::STATE, layout::EPHEMERAL]);
    let mib = |p: &gpt::partition::Partition| p.bytes_len(lb).unwrap() >> 20;
    let b = &board.partitions;
    assert_eq!(parts.iter().map(mib).collect::<Vec<_>>(), [b.efi, b.root, b.root, b.state, b.ephemeral_min]);
    assert!(parts.iter().all(|p| p.first_lba % 2048 == 0), "1 MiB aligned");
    assert_eq!(parts[0].part_type_guid, gpt::partition_types::EFI);
    assert!(parts[1..].iter().all(|p| p.part_type_guid == gpt::partition_types::LINUX_FS));
    let at = |i: usize| (parts[i].bytes_start(lb).unwrap(), parts[i].bytes_len(lb).unwrap());
    let mut img = std::fs::File::open(&opts.out).unwrap();

    // EFI: systemd-boot, loader.conf, one UKI per slot.
    let (off, len) = at(0);
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(slice(&mut img, off, len)), fatfs::FsOptions::new()).unwrap();
    let sdboot = std::fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").unwrap();
    assert_eq!(fat_file(&fs, layout::EFI_BOOT_LOADER.trim_start_matches('/')), sdboot);
    let conf = String::from_utf8(fat_file(&fs, layout::EFI_LOADER_CONF.trim_start_matches('/'))).unwrap();
    assert_eq!(conf, image_builder::LOADER_CONF);
    // A fresh image: A preferred, B its committed fallback.
    let fresh = machinery::slots::BootState::fresh();
    let word = manifest.verity.clone().expect("the manifest names the root's verity parameters");
    let verity = machinery::verity::RootVerity::from_cmdline(&word).unwrap().unwrap();
    for slot in [Slot::A, Slot::B] {
        let name = machinery::slots::sdboot::file_name(slot, fresh.get(slot)).unwrap();
        let path = format!("{}/{name}", layout::EFI_LINUX_DIR.trim_start_matches('/'));
        let uki_bytes = fat_file(&fs, &path);
        // The manifest's UKI is slot A's; B's differs in the slot byte only.
        let mut expected = uki_bytes.clone();
        machinery::pe::set_uki_slot(&mut expected, Slot::A).unwrap();
        assert_eq!(sha256_hex(&expected), manifest.part("uki").unwrap().sha256, "{name}");
        let pe = machinery::pe::parse_pe(&uki_bytes).unwrap();
        let cmdline = String::from_utf8(pe.data(&uki_bytes, ".cmdline").unwrap().to_vec()).unwrap();
        // The root's hash is on the command line the UKI carries.
        assert_eq!(cmdline, image_builder::slot_cmdline(&board, slot, &verity));
        assert!(cmdline.contains(&word), "{cmdline}");
        assert!(String::from_utf8_lossy(pe.data(&uki_bytes, ".osrel").unwrap()).contains("ID=plinth"));
        // The initramfs: /init, /dev/console, the modules and their order.
        let initrd = pe.data(&uki_bytes, ".initrd").unwrap();
        assert_eq!(&initrd[..4], b"\x28\xb5\x2f\xfd", "zstd compressed");
        let entries = cpio::read(&unzstd(initrd)).unwrap();
        let get = |p: &str| entries.iter().find(|e| e.path == p);
        assert_eq!(get("init").unwrap().data, init_bytes);
        assert_eq!(get("dev/console").unwrap().rdev, (5, 1));
        let mods = layout::INITRAMFS_MODULES.trim_start_matches('/');
        let order = String::from_utf8(get(&format!("{mods}/order")).unwrap().data.clone()).unwrap();
        let order: Vec<&str> = order.lines().collect();
        let names: Vec<String> = order.iter().map(|f| image_builder::kernel::module_name(f)).collect();
        // The board's boot modules first, in its order; then the runtime's,
        // each after the modules it depends on.
        let boot: Vec<String> = board.kernel.modules.iter().map(|m| m.replace('-', "_")).collect();
        assert_eq!(names[..boot.len()], boot[..]);
        for m in &board.kernel.runtime_modules {
            assert!(names.contains(&m.replace('-', "_")), "{m} is loaded");
        }
        for (i, f) in order.iter().enumerate() {
            let data = &get(&format!("{mods}/{f}")).unwrap().data;
            assert!(data.starts_with(b"\x7fELF"), "{f}");
            for dep in image_builder::kernel::module_depends(data) {
                assert!(!names[i..].contains(&dep), "{f} needs {dep}, loaded after it");
            }
        }
        let files = entries.iter().filter(|e| e.mode & 0o170000 == 0o100000).count();
        assert_eq!(files, 1 + order.len() + 1, "init, the modules and order; nothing else");
    }

    // Both root slots hold the same squashfs, then its dm-verity hash tree
    // right after the padded data; the kernel's format (veritysetup
    // verify) accepts it with the command line's parameters.
    let (a_off, a_len) = at(1);
    let (b_off, b_len) = at(2);
    let part_size = manifest.part("root").unwrap().size;
    let root_size = manifest.part("root.squashfs").unwrap().size;
    assert!(part_size <= a_len && part_size <= b_len);
    assert_eq!(verity.hash_offset(), root_size.div_ceil(4096) * 4096);
    assert!(part_size > verity.hash_offset(), "the tree follows the data");
    let part_a = slice(&mut img, a_off, part_size);
    assert_eq!(part_a, slice(&mut img, b_off, part_size));
    let part_file = w.join("root-a.img");
    std::fs::write(&part_file, &part_a).unwrap();
    assert!(image_builder::verity::verify(&part_file, &verity).unwrap());
    let root_a = part_a[..root_size as usize].to_vec();
    assert_eq!(&root_a[..4], b"hsqs");
    let sq = w.join("root.squashfs");
    std::fs::write(&sq, &root_a).unwrap();
    let out = Command::new("unsquashfs").arg("-d").arg(w.join("root")).arg(&sq).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = |p: &str| w.join("root").join(p.trim_start_matches('/'));
    assert_eq!(std::fs::read(root(layout::ROOT_INIT)).unwrap(), init_bytes);
    assert!(root(layout::ROOT_APID).is_file());
    assert_eq!(std::fs::read_to_string(root(layout::ROOT_TRUSTED_KEY)).unwrap(), pem);
    let board_text = std::fs::read_to_string(opts.board_dir.join("qemu-x86_64.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(root(layout::ROOT_BOARD)).unwrap(), board_text, "the board file as it is");
    assert!(std::fs::read_to_string(root("/etc/os-release")).unwrap().contains("ID=plinth"));
    assert_eq!(std::fs::read_link(root("/etc/resolv.conf")).unwrap(), Path::new("/run/resolv.conf"));
    for d in ["/proc", "/sys", "/dev", "/run", "/var", "/tmp", layout::MOUNT_STATE] {
        assert!(root(d).is_dir(), "{d}");
        assert_eq!(std::fs::read_dir(root(d)).unwrap().count(), 0, "{d} is an empty mount point");
    }
    // The container runtime, with the libraries it links and its config.
    for (p, _) in image_builder::runtime::PROGRAMS {
        assert!(root(p).is_file(), "{p}");
    }
    assert!(root("/lib64/ld-linux-x86-64.so.2").is_file());
    assert_eq!(std::fs::read_link(root("/usr/sbin/iptables")).unwrap(), Path::new("xtables-nft-multi"));
    assert_eq!(
        std::fs::read_to_string(root(layout::ROOT_CONTAINERD_CONFIG)).unwrap(),
        image_builder::runtime::containerd_config()
    );
    let images: Vec<String> = std::fs::read_dir(root(layout::ROOT_IMAGES))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(images, [layout::PAUSE_ARCHIVE], "the pause image, and no preloads asked for");
    // The root's manifest covers every part built before it.
    let inner: Manifest = serde_json::from_str(&std::fs::read_to_string(root(layout::ROOT_MANIFEST)).unwrap()).unwrap();
    for p in &inner.parts {
        assert_eq!(manifest.part(&p.name).map(|q| &q.sha256), Some(&p.sha256), "{}", p.name);
    }
    assert_eq!(inner.part("plinth-init").unwrap().sha256, sha256_hex(&init_bytes));
    assert!(inner.part("kernel.deb").is_some() && inner.part("root.squashfs").is_none());
    // The root cannot hold the hash of the UKI that carries the root's hash.
    assert!(inner.part("uki").is_none() && inner.verity.is_none());

    // STATE and EPHEMERAL are left for init to format: zeroed but for the
    // fresh-install marker, which init formats.
    for i in [3, 4] {
        let (off, _) = at(i);
        let head = slice(&mut img, off, 1 << 20);
        let m = layout::FRESH_MARKER_LEN;
        assert_eq!(layout::read_fresh_marker(&head[..m], &parts[i].name), layout::Marker::Fresh, "{}", parts[i].name);
        assert!(head[m..].iter().all(|&b| b == 0), "{}", parts[i].name);
    }
    // e2fsck repairs them, with the libraries it links.
    assert!(root("/usr/sbin/e2fsck").exists() && root("/usr/sbin/mke2fs").exists());
}

#[test]
fn a_misspelt_module_or_a_bad_preload_archive_is_refused_before_anything_is_written() {
    if !tools_ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(workspace.join("board-configs/qemu-x86_64.toml")).unwrap();
    let misspelt = text.replace("\"xt_comment\"", "\"xt_coment\"");
    assert_ne!(misspelt, text, "the board lists xt_comment");
    let board = w.join("qemu-x86_64.toml");
    std::fs::write(&board, misspelt).unwrap();
    let key = machinery::signing::generate_signing_key().unwrap();
    std::fs::write(w.join("ops.pub"), machinery::signing::verifying_key_to_pem(&key.verifying_key()).unwrap()).unwrap();
    let cache = image_builder::default_cache_dir();
    let mut opts = BuildOptions {
        board: board.display().to_string(),
        board_dir: w.to_path_buf(),
        trust_key: w.join("ops.pub"),
        bin_dir: fixture_bins(w),
        out: w.join("plinth.img"),
        cache_dir: cache,
        version: machinery::VERSION.to_string(),
        security_version: machinery::SECURITY_VERSION,
        preload_images: Vec::new(),
        secure_boot: None,
    };
    let e = image_builder::build(&opts).unwrap_err().to_string();
    assert_eq!(
        e,
        "board qemu-x86_64: kernel modules: the board needs xt_coment, which is neither built in nor a module file \
         of the kernel package (misspelt?)"
    );
    assert!(!opts.out.exists(), "nothing written");

    std::fs::write(&board, &text).unwrap();
    let notes = w.join("notes.tar");
    std::fs::write(&notes, "not an image archive").unwrap();
    opts.preload_images = vec![notes.clone()];
    let e = image_builder::build(&opts).unwrap_err().to_string();
    assert!(e.starts_with(&format!("--preload-image {}: ", notes.display())), "{e}");
    assert!(!opts.out.exists(), "nothing written");
}
