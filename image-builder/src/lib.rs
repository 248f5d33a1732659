//! image-builder: turns a board config, Plinth's static binaries and the
//! operator's config-signing key into a bootable GPT disk image.
//!
//! Steps: fetch the board's kernel package → build the initramfs (cpio, in
//! Rust) → build the root image (mksquashfs) → build slot A's Unified Kernel
//! Image (objcopy over systemd's EFI stub) → build the EFI system partition
//! (fatfs) with systemd-boot → lay out the GPT (gpt crate) → write the
//! manifest. Nothing needs root or loop devices.

pub mod cpio;
pub mod disk;
pub mod kernel;
pub mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use machinery::board::Board;
use machinery::layout::{self, Slot};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{tool} is missing: install the Debian package {package} (scripts/setup-debian.sh installs everything)")]
    MissingTool { tool: String, package: String },
    #[error("{what} failed: {detail}")]
    Tool { what: String, detail: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: sha256 is {found}, the board pins {expected}")]
    Checksum { path: PathBuf, expected: String, found: String },
    #[error("kernel package: {0}")]
    Package(String),
    #[error("{0}")]
    Board(#[from] machinery::board::BoardError),
    #[error("{path} is dynamically linked: the image has no libraries for it; build it with scripts/build-static.sh")]
    NotStatic { path: PathBuf },
    #[error("{0}: not a PEM public key: {1}")]
    TrustKey(PathBuf, String),
    #[error("EFI partition: {0}")]
    Fat(String),
    #[error("partition table: {0}")]
    Gpt(String),
    #[error("{what} is {size} bytes, its partition holds {room}: raise its size in the board config")]
    TooBig { what: String, size: u64, room: u64 },
}

impl BuildError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> BuildError {
        BuildError::Io { op, path: path.to_path_buf(), source }
    }
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Board name (file `board-configs/<name>.toml`) or a path to a board file.
    pub board: String,
    pub board_dir: PathBuf,
    /// The operator's config-signing public key (PEM), baked into the root.
    pub trust_key: PathBuf,
    /// Where the static `plinth-init` and `apid` are.
    pub bin_dir: PathBuf,
    pub out: PathBuf,
    pub cache_dir: PathBuf,
}

/// What was built, with the sha256 of every part.
#[derive(Debug, serde::Serialize)]
pub struct Manifest {
    pub plinth_version: String,
    pub board: String,
    pub kernel_package: String,
    pub kernel_version: String,
    pub parts: Vec<PartSum>,
    pub partitions: Vec<disk::Placed>,
}

#[derive(Debug, serde::Serialize)]
pub struct PartSum {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

fn sum(name: &str, path: &Path) -> Result<PartSum, BuildError> {
    let size = std::fs::metadata(path).map_err(|e| BuildError::io("stat", path, e))?.len();
    Ok(PartSum { name: name.to_string(), size, sha256: kernel::sha256_file(path)? })
}

fn write(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| BuildError::io("create", d, e))?;
    }
    std::fs::write(path, data).map_err(|e| BuildError::io("write", path, e))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt as _;
    let data = std::fs::read(from).map_err(|e| BuildError::io("read", from, e))?;
    write(to, &data)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(|e| BuildError::io("chmod", to, e))
}

/// Loads a board by name from `board_dir`, or from a path.
pub fn load_board(name: &str, board_dir: &Path) -> Result<Board, BuildError> {
    let path = if name.ends_with(".toml") { PathBuf::from(name) } else { board_dir.join(format!("{name}.toml")) };
    let text = std::fs::read_to_string(&path).map_err(|e| BuildError::io("read board config", &path, e))?;
    Ok(Board::parse(&path.display().to_string(), &text)?)
}

/// The root image's file tree (relative path → source file and mode).
fn root_tree(opts: &BuildOptions, board_text: &str, stage: &Path) -> Result<(), BuildError> {
    for d in ["proc", "sys", "dev", "run", "var", "tmp", "system/state", "etc/plinth"] {
        std::fs::create_dir_all(stage.join(d)).map_err(|e| BuildError::io("create", &stage.join(d), e))?;
    }
    let rel = |p: &str| stage.join(p.trim_start_matches('/'));
    copy(&opts.bin_dir.join("plinth-init"), &rel(layout::ROOT_INIT), 0o755)?;
    copy(&opts.bin_dir.join("apid"), &rel(layout::ROOT_APID), 0o755)?;
    copy(&opts.trust_key, &rel(layout::ROOT_TRUSTED_KEY), 0o644)?;
    write(&rel(layout::ROOT_BOARD), board_text.as_bytes())?;
    write(&rel("/etc/os-release"), os_release().as_bytes())?;
    let manifest = serde_json::json!({"plinth_version": machinery::VERSION, "board": opts.board});
    write(&rel(layout::ROOT_MANIFEST), manifest.to_string().as_bytes())?;
    // mke2fs creates STATE and EPHEMERAL on first boot; it comes with the
    // exact libraries it links, and nothing else.
    let mke2fs = tools::require("mke2fs", "e2fsprogs")?;
    copy(&mke2fs, &rel("/usr/sbin/mke2fs"), 0o755)?;
    for lib in tools::shared_libraries(&mke2fs)? {
        copy(&lib, &stage.join(lib.strip_prefix("/").unwrap_or(&lib)), 0o755)?;
    }
    Ok(())
}

fn os_release() -> String {
    format!(
        "NAME=Plinth\nID=plinth\nVERSION_ID={v}\nPRETTY_NAME=\"Plinth {v}\"\nHOME_URL=\"https://example.invalid/plinth\"\n",
        v = machinery::VERSION
    )
}

/// Builds slot `slot`'s UKI from systemd's EFI stub.
fn uki(stub: &Path, vmlinuz: &Path, initrd: &Path, cmdline: &str, work: &Path, out: &Path) -> Result<(), BuildError> {
    let osrel = work.join("os-release");
    let cmd = work.join("cmdline");
    write(&osrel, os_release().as_bytes())?;
    write(&cmd, cmdline.as_bytes())?;
    let objcopy = tools::require("objcopy", "binutils")?;
    let section = |name: &str, file: &Path, vma: &str| {
        [
            "--add-section".to_string(),
            format!("{name}={}", file.display()),
            "--change-section-vma".to_string(),
            format!("{name}={vma}"),
        ]
    };
    let mut c = Command::new(objcopy);
    c.args(section(".osrel", &osrel, "0x20000"))
        .args(section(".cmdline", &cmd, "0x30000"))
        .args(section(".linux", vmlinuz, "0x2000000"))
        .args(section(".initrd", initrd, "0x3000000"))
        .arg(stub)
        .arg(out);
    tools::run(&mut c)
}

fn step(pb: &ProgressBar, msg: &str) {
    pb.set_message(msg.to_string());
    pb.inc(1);
}

/// Builds the image; returns its manifest (also written next to it).
pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    let board = load_board(&opts.board, &opts.board_dir)?;
    let board_text = toml_text(&board);
    let pb = ProgressBar::new(8).with_style(
        ProgressStyle::with_template("[{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(200));

    // Check the inputs and the tools first: fail before minutes of work.
    for b in ["plinth-init", "apid"] {
        let p = opts.bin_dir.join(b);
        if !p.exists() {
            return Err(BuildError::io("find", &p, std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        if !tools::is_static(&p)? {
            return Err(BuildError::NotStatic { path: p });
        }
    }
    let key = std::fs::read_to_string(&opts.trust_key).map_err(|e| BuildError::io("read", &opts.trust_key, e))?;
    machinery::signing::verifying_key_from_pem(&key)
        .map_err(|e| BuildError::TrustKey(opts.trust_key.clone(), e.to_string()))?;
    let mksquashfs = tools::require("mksquashfs", "squashfs-tools")?;
    let stub = tools::require("/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "systemd-boot-efi")?;
    let sdboot = tools::require("/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "systemd-boot-efi")?;
    tools::require("objcopy", "binutils")?;

    step(&pb, &format!("fetching {} {}", board.kernel.package, board.kernel.version));
    let k = kernel::fetch(&board.kernel, board.arch.debian(), &opts.cache_dir.join("kernel"))?;

    let work = tempfile::tempdir().map_err(|e| BuildError::io("create temp dir in", &std::env::temp_dir(), e))?;
    let w = work.path();

    step(&pb, "building the initramfs");
    let mut entries = vec![
        cpio::Entry::Dir { path: "dev".into() },
        cpio::Entry::CharDev { path: "dev/console".into(), major: 5, minor: 1 },
        cpio::Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: std::fs::read(opts.bin_dir.join("plinth-init"))
                .map_err(|e| BuildError::io("read", &opts.bin_dir.join("plinth-init"), e))?,
        },
    ];
    let mods = layout::INITRAMFS_MODULES.trim_start_matches('/');
    let mut prefix = String::new();
    for d in mods.split('/') {
        prefix = if prefix.is_empty() { d.to_string() } else { format!("{prefix}/{d}") };
        entries.push(cpio::Entry::Dir { path: prefix.clone() });
    }
    let mut order = String::new();
    for m in &board.kernel.modules {
        let src = kernel::find_module(&k.modules_dir, m)?;
        let file = src.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let data = std::fs::read(&src).map_err(|e| BuildError::io("read", &src, e))?;
        entries.push(cpio::Entry::File { path: format!("{mods}/{file}"), mode: 0o644, data });
        order.push_str(&file);
        order.push('\n');
    }
    entries.push(cpio::Entry::File { path: format!("{mods}/order"), mode: 0o644, data: order.into_bytes() });
    let initrd = w.join("initrd.cpio");
    write(&initrd, &cpio::archive(&entries))?;

    step(&pb, "building the root image (squashfs, zstd)");
    let stage = w.join("root");
    root_tree(opts, &board_text, &stage)?;
    let root_img = w.join("root.squashfs");
    tools::run(Command::new(mksquashfs).arg(&stage).arg(&root_img).args([
        "-comp",
        "zstd",
        "-all-root",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]))?;

    step(&pb, "building the unified kernel image for slot A");
    let uki_a = w.join("plinth-a.efi");
    uki(&stub, &k.vmlinuz, &initrd, &board.cmdline_for(Slot::A), w, &uki_a)?;

    step(&pb, "building the EFI system partition (systemd-boot)");
    let sdboot_bytes = std::fs::read(&sdboot).map_err(|e| BuildError::io("read", &sdboot, e))?;
    let uki_bytes = std::fs::read(&uki_a).map_err(|e| BuildError::io("read", &uki_a, e))?;
    let loader_conf = b"default plinth-a.efi\ntimeout 0\nconsole-mode keep\neditor no\n";
    let efi = disk::fat_image(
        board.partitions.efi,
        &[
            ("EFI/BOOT/BOOTX64.EFI", &sdboot_bytes),
            ("EFI/Linux/plinth-a.efi", &uki_bytes),
            ("loader/loader.conf", loader_conf),
        ],
    )?;
    let efi_img = w.join("efi.img");
    write(&efi_img, &efi)?;

    step(&pb, "laying out the GPT disk image");
    let p = &board.partitions;
    let placed = disk::write_gpt(
        &opts.out,
        &[
            disk::Part { label: layout::EFI, esp: true, size_mib: p.efi, content: Some(&efi_img) },
            disk::Part { label: layout::ROOT_A, esp: false, size_mib: p.root, content: Some(&root_img) },
            // Slot B stays empty until the first upgrade writes it.
            disk::Part { label: layout::ROOT_B, esp: false, size_mib: p.root, content: None },
            // init creates STATE's and EPHEMERAL's filesystems on first boot.
            disk::Part { label: layout::STATE, esp: false, size_mib: p.state, content: None },
            disk::Part { label: layout::EPHEMERAL, esp: false, size_mib: p.ephemeral_min, content: None },
        ],
    )?;

    step(&pb, "writing the manifest");
    let manifest = Manifest {
        plinth_version: machinery::VERSION.to_string(),
        board: board.name.clone(),
        kernel_package: board.kernel.package.clone(),
        kernel_version: board.kernel.version.clone(),
        parts: vec![
            PartSum { name: "kernel.deb".into(), size: 0, sha256: k.deb_sha256.clone() },
            sum("vmlinuz", &k.vmlinuz)?,
            sum("initramfs", &initrd)?,
            sum("root-a.squashfs", &root_img)?,
            sum("plinth-a.efi", &uki_a)?,
            sum("systemd-bootx64.efi", &sdboot)?,
            sum("plinth-init", &opts.bin_dir.join("plinth-init"))?,
            sum("apid", &opts.bin_dir.join("apid"))?,
        ],
        partitions: placed,
    };
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    write(&PathBuf::from(format!("{}.manifest.json", opts.out.display())), json.as_bytes())?;
    pb.finish_with_message(format!("built {}", opts.out.display()));
    Ok(manifest)
}

fn toml_text(board: &Board) -> String {
    toml::to_string_pretty(board).unwrap_or_default()
}
