//! image-builder: turns a board config, Plinth's static binaries and the
//! operator's config-signing key into a bootable GPT disk image.
//!
//! Steps: fetch the board's kernel package → build the initramfs (cpio, in
//! Rust) → build each slot's Unified Kernel Image (objcopy over systemd's
//! EFI stub), or on a Raspberry Pi board fetch the firmware → build the
//! root image (mksquashfs), which carries the manifest of everything before
//! it → build the FAT partitions (fatfs): the EFI system partition with
//! systemd-boot, or the Pi's `autoboot.txt` partition and one boot
//! partition per slot → lay out the GPT (gpt crate) with the root image in
//! both slots → write the manifest next to the image. Nothing needs root
//! or loop devices. `image-builder/IMAGE.md` says why.

pub mod apt;
pub mod compress;
pub mod cpio;
pub mod disk;
pub mod kernel;
pub mod oci;
pub mod runtime;
pub mod secureboot;
pub mod tools;
pub mod uki;
pub mod userland;
pub mod verity;

use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use machinery::board::{Arch, Board, BootMethod};
use machinery::bundle::{self, BundleManifest, BundlePart};
use machinery::layout::{self, Slot};
use machinery::slots::{self, BootState};

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
    #[error(
        "{path} is {found} code, board {board} is {arch}: point --bin-dir at the {arch} build (scripts/build-static.sh --arch)"
    )]
    WrongArch { path: PathBuf, found: String, board: String, arch: String },
    #[error("{0}: not a PEM public key: {1}")]
    TrustKey(PathBuf, String),
    #[error("FAT partition {0}")]
    Fat(String),
    #[error("partition table: {0}")]
    Gpt(String),
    #[error("{what} is {size} bytes, its partition holds {room}: raise its size in the board config")]
    TooBig { what: String, size: u64, room: u64 },
    #[error(
        "board {board}: kernel modules: {module} needs {needs}, which is neither built in nor a module file of the kernel package (misspelt?)"
    )]
    Module { board: String, module: String, needs: String },
    #[error("board {board}: {what} images are not built yet ({why})")]
    Unsupported { board: String, what: String, why: &'static str },
    #[error("--preload-image {path}: {why}")]
    Preload { path: PathBuf, why: String },
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
    /// Where the static `plinth-init`, `apid` and `orchestrator` are.
    pub bin_dir: PathBuf,
    pub out: PathBuf,
    pub cache_dir: PathBuf,
    /// The Plinth version stamped into the root (os-release, manifest):
    /// what the node reports once booted, and what upgrades compare.
    pub version: String,
    /// The security version signed into a bundle and stamped into the
    /// root's manifest (`machinery::SECURITY_VERSION` unless told): a node
    /// that commits it never installs or boots a lower one again.
    pub security_version: u64,
    /// OCI image archives (files, or directories of `*.tar`) baked into the
    /// root and imported into containerd at boot: pods without a registry.
    pub preload_images: Vec<PathBuf>,
    /// Sign systemd-boot and the UKI for UEFI Secure Boot with this key
    /// (UEFI boards only). The UKI then names no slot on its command line
    /// (a signature covers every byte, and one signed file serves both
    /// slots): init asks systemd-boot which entry it started.
    pub secure_boot: Option<secureboot::SecureBootKey>,
}

/// What was built, with the sha256 of every part. The root image carries
/// the parts that exist before it (at `layout::ROOT_MANIFEST`, without
/// `partitions`); the copy next to the image adds the root and EFI
/// partition images, the image itself and where each partition is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub plinth_version: String,
    pub board: String,
    pub arch: String,
    pub kernel_package: String,
    pub kernel_version: String,
    /// What the node's security floor becomes once this image is committed
    /// (`machinery::bundle::BundleManifest::security_version`).
    #[serde(default)]
    pub security_version: u64,
    pub parts: Vec<PartSum>,
    /// The root's dm-verity word on the kernel command line
    /// (`machinery::verity`); only in the manifest next to the image (the
    /// root cannot hold its own hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<disk::Placed>,
}

impl Manifest {
    pub fn part(&self, name: &str) -> Option<&PartSum> {
        self.parts.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartSum {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

fn sum(name: &str, path: &Path) -> Result<PartSum, BuildError> {
    let size = std::fs::metadata(path).map_err(|e| BuildError::io("stat", path, e))?.len();
    Ok(PartSum { name: name.to_string(), size, sha256: kernel::sha256_file(path)? })
}

pub(crate) fn write(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| BuildError::io("create", d, e))?;
    }
    std::fs::write(path, data).map_err(|e| BuildError::io("write", path, e))
}

/// Copies a file (its content, following links).
pub(crate) fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt as _;
    let data = std::fs::read(from).map_err(|e| BuildError::io("read", from, e))?;
    write(to, &data)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(|e| BuildError::io("chmod", to, e))
}

/// The archives `--preload-image` names: files as given, directories'
/// `*.tar` in name order; each checked to be an image archive.
pub fn preload_archives(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| BuildError::io("read", p, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "tar"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    for a in &out {
        oci::check_archive(a)?;
    }
    Ok(out)
}

/// Where downloaded packages are kept unless told otherwise:
/// `~/.cache/plinth` (`./.cache/plinth` without a home).
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from(".cache/plinth"), |h| PathBuf::from(h).join(".cache/plinth"))
}

/// Where `scripts/build-static.sh` puts the static binaries for `arch`
/// (`target/<triple>/release` in this workspace).
pub fn default_bin_dir(arch: Arch) -> PathBuf {
    let triple = match arch {
        Arch::X86_64 => "x86_64-unknown-linux-gnu",
        Arch::Aarch64 => "aarch64-unknown-linux-gnu",
    };
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(triple).join("release")
}

/// Loads a board by name from `board_dir`, or from a path.
pub fn load_board(name: &str, board_dir: &Path) -> Result<Board, BuildError> {
    Ok(load_board_text(name, board_dir)?.0)
}

/// Stages the root image's file tree in `stage`.
#[allow(clippy::too_many_arguments)]
fn root_tree(
    opts: &BuildOptions,
    board: &Board,
    board_text: &str,
    manifest: &Manifest,
    preloads: &[PathBuf],
    userland: &userland::Userland,
    build_time: u64,
    stage: &Path,
) -> Result<(), BuildError> {
    for d in ["proc", "sys", "dev", "run", "var", "tmp", "system/state", "etc/plinth"] {
        std::fs::create_dir_all(stage.join(d)).map_err(|e| BuildError::io("create", &stage.join(d), e))?;
    }
    let rel = |p: &str| stage.join(p.trim_start_matches('/'));
    for (name, path) in layout::IMAGE_BINARIES {
        copy(&opts.bin_dir.join(name), &rel(path), 0o755)?;
    }
    copy(&opts.trust_key, &rel(layout::ROOT_TRUSTED_KEY), 0o644)?;
    write(&rel(layout::ROOT_BOARD), board_text.as_bytes())?;
    // init's clock floor on boards with no real-time clock (Raspberry Pi).
    write(&rel(layout::ROOT_BUILD_TIME), format!("{build_time}\n").as_bytes())?;
    write(&rel("/etc/os-release"), os_release(&opts.version).as_bytes())?;
    // containerd copies it into every pod sandbox.
    write(&rel("/etc/hosts"), b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    // init writes the name servers it learns to /run (the root is read-only).
    std::os::unix::fs::symlink("/run/resolv.conf", rel("/etc/resolv.conf"))
        .map_err(|e| BuildError::io("link", &rel("/etc/resolv.conf"), e))?;
    let json = serde_json::to_string_pretty(manifest).unwrap_or_default();
    write(&rel(layout::ROOT_MANIFEST), json.as_bytes())?;
    runtime::stage(stage, userland)?;
    // The pod sandbox image first, then the preloaded ones, each under a
    // name of its own (two `busybox.tar` from different directories).
    let images = rel(layout::ROOT_IMAGES);
    let pause_bin = opts.bin_dir.join(layout::PAUSE_BINARY);
    let pause = std::fs::read(&pause_bin).map_err(|e| BuildError::io("read", &pause_bin, e))?;
    let archive = oci::single_binary_image(&pause, "pause", layout::PAUSE_IMAGE, board.arch)
        .map_err(|e| BuildError::io("write the pause image for", &pause_bin, e))?;
    write(&images.join(layout::PAUSE_ARCHIVE), &archive)?;
    for (i, a) in preloads.iter().enumerate() {
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        copy(a, &images.join(format!("{}-{name}", i + 1)), 0o644)?;
    }
    // mke2fs creates STATE and EPHEMERAL on first boot, e2fsck repairs
    // them; they come with the exact libraries they link, and nothing else.
    for program in ["/usr/sbin/mke2fs", "/usr/sbin/e2fsck"] {
        let file = userland.file(program, "e2fsprogs")?;
        copy(&file, &rel(program), 0o755)?;
        for lib in userland.libraries(&file)? {
            let at = stage.join(lib.at.strip_prefix("/").unwrap_or(&lib.at));
            if !at.exists() {
                copy(&lib.from, &at, 0o755)?;
            }
        }
    }
    Ok(())
}

fn os_release(version: &str) -> String {
    format!(
        "NAME=Plinth\nID=plinth\nVERSION_ID={version}\nPRETTY_NAME=\"Plinth {version}\"\nHOME_URL=\"https://example.invalid/plinth\"\n"
    )
}

/// The UKI's os-release names no version: systemd-boot would order entries
/// by it, and the slots' order must come from their file names alone.
fn uki_os_release() -> String {
    "NAME=Plinth\nID=plinth\nPRETTY_NAME=\"Plinth\"\n".to_string()
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise (CI logs).
/// A plain line is printed when its step ends, with the step's own
/// duration (a line printed at a step's start with the time so far reads
/// as the previous step's cost).
struct Progress {
    bar: Option<ProgressBar>,
    n: u64,
    total: u64,
    start: std::time::Instant,
    /// The running step: its message and start.
    current: Option<(String, std::time::Instant)>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        use std::io::IsTerminal as _;
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new(total).with_style(
                ProgressStyle::with_template("[{pos}/{len}] {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.enable_steady_tick(std::time::Duration::from_millis(200));
            pb
        });
        Progress { bar, n: 0, total, start: std::time::Instant::now(), current: None }
    }

    fn quiet() -> bool {
        std::env::var_os("PLINTH_QUIET").is_some()
    }

    /// Prints the step that just ended with its duration.
    fn end_step(&mut self) {
        if let Some((msg, at)) = self.current.take()
            && self.bar.is_none()
            && !Self::quiet()
        {
            eprintln!("[{}/{}] {msg}: {:.1} s", self.n, self.total, at.elapsed().as_secs_f64());
        }
    }

    fn step(&mut self, msg: &str) {
        self.end_step();
        self.n += 1;
        if let Some(pb) = &self.bar {
            pb.set_message(msg.to_string());
            pb.inc(1);
        }
        self.current = Some((msg.to_string(), std::time::Instant::now()));
    }

    fn finish(&mut self, msg: String) {
        self.end_step();
        match &self.bar {
            Some(pb) => pb.finish_with_message(msg),
            None if !Self::quiet() => eprintln!("{msg} in {:.1} s", self.start.elapsed().as_secs_f64()),
            None => {}
        }
    }
}

/// What an image and a bundle are both made of.
struct Parts {
    board: Board,
    manifest: Manifest,
    boot: Boot,
    /// The root partition's content: the squashfs, then its hash tree.
    root_img: PathBuf,
    /// The root's dm-verity parameters, on every slot's command line.
    verity: machinery::verity::RootVerity,
}

/// How a slot boots.
enum Boot {
    /// UEFI: slot A's UKI (slot B's is the same with `plinth.slot=b`) and
    /// systemd-boot.
    Uki { uki_a: Vec<u8>, sdboot: PathBuf },
    /// Raspberry Pi firmware (and `arm64-virt`): the files of a slot's boot
    /// partition, slot A's (slot B's differs in `cmdline.txt` only).
    Pi { files: Vec<(String, Vec<u8>)> },
}

/// On a Pi slot's boot partition: the kernel (Debian's arm64 Image), the
/// initramfs and the firmware's config, by the names `config.txt` gives.
pub const RPI_KERNEL: &str = "vmlinuz";
pub const RPI_INITRAMFS: &str = "initrd.img";
pub const RPI_CONFIG_TXT: &str = "/config.txt";
/// Size of the Pi's `BOOT` partition (`autoboot.txt`, a seed config): a
/// FAT16 the EEPROM boot loader reads.
pub const RPI_AUTOBOOT_MIB: u64 = 16;

/// `config.txt` of a Pi slot: the board's lines, then the kernel, the
/// initramfs right after it, and the command line file.
pub fn rpi_config_txt(board: &Board, version: &str) -> String {
    let mut c = format!("# Written by image-builder: Plinth {version} for {}.\n[all]\n", board.name);
    for l in board.firmware.iter().flat_map(|f| &f.config) {
        c.push_str(l);
        c.push('\n');
    }
    c.push_str(&format!(
        "kernel={RPI_KERNEL}\ninitramfs {RPI_INITRAMFS} followkernel\ncmdline={}\n",
        layout::RPI_CMDLINE_TXT.trim_start_matches('/')
    ));
    c
}

/// A slot's kernel command line: the board's, with the root's dm-verity
/// parameters.
pub fn slot_cmdline(board: &Board, slot: Slot, verity: &machinery::verity::RootVerity) -> String {
    format!("{} {}", board.cmdline_for(slot), verity.word())
}

/// The command line a UKI carries: slot A's, or on a signed one no slot at
/// all (the same signed file boots either slot; init reads the slot from
/// the entry systemd-boot started).
pub fn uki_cmdline(board: &Board, verity: &machinery::verity::RootVerity, signed: bool) -> String {
    let line = slot_cmdline(board, Slot::A, verity);
    if !signed {
        return line;
    }
    line.split_whitespace().filter(|w| !w.starts_with(layout::CMDLINE_SLOT)).collect::<Vec<_>>().join(" ")
}

/// The files of a Pi slot's boot partition with that slot's command line.
fn rpi_slot_files(files: &[(String, Vec<u8>)], parts: &Parts, slot: Slot) -> Vec<(String, Vec<u8>)> {
    let cmdline = layout::RPI_CMDLINE_TXT.trim_start_matches('/');
    files
        .iter()
        .map(|(n, d)| {
            if n == cmdline {
                (n.clone(), format!("{}\n", slot_cmdline(&parts.board, slot, &parts.verity)).into_bytes())
            } else {
                (n.clone(), d.clone())
            }
        })
        .collect()
}

/// A Pi slot's boot partition (FAT32), as bytes.
fn rpi_boot_partition(parts: &Parts, files: &[(String, Vec<u8>)], slot: Slot) -> Result<Vec<u8>, BuildError> {
    let files = rpi_slot_files(files, parts, slot);
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    disk::fat_image(parts.board.partitions.efi, slot.boot_label(), disk::Fat::Fat32, &refs)
}

/// The ELF machine of a program (`x86_64`, `aarch64`), from its header.
fn elf_machine(path: &Path) -> Result<Option<Arch>, BuildError> {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    let mut f = std::fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    f.read_exact(&mut head).map_err(|e| BuildError::io("read", path, e))?;
    Ok(match (&head[..4], u16::from_le_bytes([head[18], head[19]])) {
        (b"\x7fELF", 0x3e) => Some(Arch::X86_64),
        (b"\x7fELF", 0xb7) => Some(Arch::Aarch64),
        _ => None,
    })
}

/// When the image was built: `SOURCE_DATE_EPOCH` if set (reproducible
/// builds), else now; Unix seconds.
pub fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    })
}

/// Checks the inputs and the tools, then builds the kernel, initramfs, the
/// slot's boot files and the root image in `w`.
fn build_parts(opts: &BuildOptions, w: &Path, progress: &mut Progress) -> Result<Parts, BuildError> {
    let (board, board_text) = load_board_text(&opts.board, &opts.board_dir)?;
    if let (BootMethod::UefiUki, Arch::Aarch64) = (board.boot, board.arch) {
        return Err(BuildError::Unsupported {
            board: board.name,
            what: "aarch64 UEFI".into(),
            why: "it needs systemd-boot-efi:arm64; arm64 boards boot the Raspberry Pi way (boot = \"rpi-firmware\")",
        });
    }
    // Check the inputs and the tools first: fail before minutes of work.
    for b in layout::IMAGE_BINARIES.iter().map(|(b, _)| *b).chain([layout::PAUSE_BINARY]) {
        let p = opts.bin_dir.join(b);
        if !p.exists() {
            return Err(BuildError::io(
                "find (build it with scripts/build-static.sh)",
                &p,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        match elf_machine(&p)? {
            Some(a) if a == board.arch => {}
            found => {
                return Err(BuildError::WrongArch {
                    path: p,
                    found: found.map_or("not ELF".to_string(), |a| format!("{a:?}").to_lowercase()),
                    board: board.name.clone(),
                    arch: format!("{:?}", board.arch).to_lowercase(),
                });
            }
        }
        if !tools::is_static(&p)? {
            return Err(BuildError::NotStatic { path: p });
        }
    }
    let key = std::fs::read_to_string(&opts.trust_key).map_err(|e| BuildError::io("read", &opts.trust_key, e))?;
    machinery::signing::verifying_key_from_pem(&key)
        .map_err(|e| BuildError::TrustKey(opts.trust_key.clone(), e.to_string()))?;
    let mksquashfs = tools::require("mksquashfs", "squashfs-tools")?;
    let uefi = board.boot == BootMethod::UefiUki;
    let (stub, sdboot) = if uefi {
        tools::require("objcopy", "binutils")?;
        (
            Some(tools::require(uki::STUB_X64, "systemd-boot-efi")?),
            Some(tools::require("/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "systemd-boot-efi")?),
        )
    } else {
        (None, None)
    };
    tools::require("readelf", "binutils")?;
    tools::require("dpkg-deb", "dpkg")?;
    let zstd = tools::require("zstd", "zstd")?;
    let userland = userland::Userland::for_arch(board.arch, &opts.cache_dir);
    if board.arch.debian() == kernel::HOST_ARCH {
        tools::require("mke2fs", "e2fsprogs")?;
    }
    runtime::require(&userland)?;
    let preloads = preload_archives(&opts.preload_images)?;
    tools::require("veritysetup", "cryptsetup-bin")?;
    if let Some(k) = &opts.secure_boot {
        if !uefi {
            return Err(BuildError::Unsupported {
                board: board.name,
                what: "Secure Boot signed".into(),
                why: "the board boots through the Raspberry Pi firmware, which has no UEFI Secure Boot (docs/security.md)",
            });
        }
        k.check()?;
    }

    progress.step(&format!("fetching {} {}", board.kernel.package, board.kernel.version));
    let k = kernel::fetch(&board.kernel, board.arch.debian(), &opts.cache_dir.join("kernel"))?;

    progress.step("building the initramfs (init and the kernel modules)");
    let cpio_file = w.join("initrd.cpio");
    write(&cpio_file, &cpio::archive(&initramfs_entries(opts, &board, &k)?))?;
    // zstd (the kernel has CONFIG_RD_ZSTD): 8 MiB → 3 MiB, so two UKIs and
    // an upgrade's third fit the EFI partition with room to spare.
    let initrd = w.join("initrd.cpio.zst");
    tools::run(Command::new(&zstd).args(["-q", "-f", "-10"]).arg(&cpio_file).arg("-o").arg(&initrd))?;

    let board_file = w.join("board.toml");
    write(&board_file, board_text.as_bytes())?;
    let mut sums = vec![sum("kernel.deb", &k.deb)?, sum("vmlinuz", &k.vmlinuz)?, sum("initramfs", &initrd)?];
    // The Pi's boot files are gathered (and summed into the root's
    // manifest) before the root; the command line, which carries the
    // root's hash, and the UKI, which carries the command line, after it.
    let sdboot = match (sdboot, &opts.secure_boot) {
        (Some(unsigned), Some(k)) => {
            let signed = w.join("systemd-bootx64.efi");
            k.sign(&unsigned, &signed)?;
            Some(signed)
        }
        (sdboot, _) => sdboot,
    };
    let pi_files = match sdboot {
        Some(ref sdboot) => {
            sums.push(sum("systemd-bootx64.efi", sdboot)?);
            None
        }
        None => {
            progress.step("gathering the boot files (firmware, device trees, config.txt)");
            let read = |p: &Path| std::fs::read(p).map_err(|e| BuildError::io("read", p, e));
            let mut files = Vec::new();
            if let Some((package, version, sha256)) = board.firmware.as_ref().and_then(|f| f.pin()) {
                let fw = firmware(&opts.cache_dir, package, version, sha256)?;
                sums.push(sum("firmware.deb", &fw.deb)?);
                for f in board.firmware.iter().flat_map(|f| &f.files) {
                    let path = fw.dir.join(f);
                    files.push((f.clone(), read(&path)?));
                }
            }
            for dt in &board.kernel.devicetrees {
                let path = k.devicetree(dt)?;
                let name = dt.rsplit('/').next().unwrap_or(dt).to_string();
                sums.push(sum(&name, &path)?);
                files.push((name, read(&path)?));
            }
            files.push((RPI_KERNEL.to_string(), read(&k.vmlinuz)?));
            files.push((RPI_INITRAMFS.to_string(), read(&initrd)?));
            files.push((
                RPI_CONFIG_TXT.trim_start_matches('/').to_string(),
                rpi_config_txt(&board, &opts.version).into_bytes(),
            ));
            Some(files)
        }
    };

    let mut manifest = Manifest {
        plinth_version: opts.version.clone(),
        board: board.name.clone(),
        arch: board.arch.debian().to_string(),
        kernel_package: board.kernel.package.clone(),
        kernel_version: board.kernel.version.clone(),
        security_version: opts.security_version,
        parts: sums,
        verity: None,
        partitions: Vec::new(),
    };
    for (name, file) in [
        ("plinth-init", "plinth-init"),
        ("apid", "apid"),
        ("orchestrator", "orchestrator"),
        (layout::PAUSE_BINARY, layout::PAUSE_BINARY),
    ] {
        manifest.parts.push(sum(name, &opts.bin_dir.join(file))?);
    }
    manifest.parts.push(sum("trusted-key.pub", &opts.trust_key)?);
    manifest.parts.push(sum("board.toml", &board_file)?);
    for a in &preloads {
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        manifest.parts.push(sum(&format!("preload/{name}"), a)?);
    }

    progress.step("building the root image (squashfs, zstd, dm-verity hash tree)");
    let stage = w.join("root");
    root_tree(opts, &board, &board_text, &manifest, &preloads, &userland, build_time(), &stage)?;
    let squashfs = w.join("root.squashfs");
    tools::run(Command::new(mksquashfs).arg(&stage).arg(&squashfs).args([
        "-comp",
        "zstd",
        // Level 6, not mksquashfs' 15: 2.8 s instead of 55 s wall for the
        // 131 MiB tree on a busy 2-core builder, for an image 8% larger
        // (image-builder/IMAGE.md, "Build time").
        "-Xcompression-level",
        ROOT_ZSTD_LEVEL,
        "-all-root",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]))?;
    manifest.parts.push(sum("root.squashfs", &squashfs)?);
    let root_img = w.join("root.img");
    let verity = verity::format(&squashfs, &root_img)?;
    manifest.verity = Some(verity.word());

    let boot = match (stub, sdboot, pi_files) {
        (Some(stub), Some(sdboot), _) => {
            progress.step("building the unified kernel image");
            let osrel = w.join("os-release");
            write(&osrel, uki_os_release().as_bytes())?;
            let cmdline = w.join("cmdline");
            write(&cmdline, uki_cmdline(&board, &verity, opts.secure_boot.is_some()).as_bytes())?;
            let uki_file = w.join("uki.efi");
            let parts = uki::UkiParts {
                stub: &stub,
                os_release: &osrel,
                cmdline: &cmdline,
                linux: &k.vmlinuz,
                initrd: &initrd,
            };
            uki::build(&parts, &uki_file, build_time())?;
            if let Some(k) = &opts.secure_boot {
                let unsigned = w.join("uki.unsigned.efi");
                std::fs::rename(&uki_file, &unsigned).map_err(|e| BuildError::io("rename", &uki_file, e))?;
                k.sign(&unsigned, &uki_file)?;
            }
            let uki_a = std::fs::read(&uki_file).map_err(|e| BuildError::io("read", &uki_file, e))?;
            manifest.parts.push(sum("uki", &uki_file)?);
            Boot::Uki { uki_a, sdboot }
        }
        (_, _, files) => {
            let mut files = files.unwrap_or_default();
            files.push((
                layout::RPI_CMDLINE_TXT.trim_start_matches('/').to_string(),
                format!("{}\n", slot_cmdline(&board, Slot::A, &verity)).into_bytes(),
            ));
            Boot::Pi { files }
        }
    };
    Ok(Parts { board, manifest, boot, root_img, verity })
}

/// The root image's zstd level (see IMAGE.md, "Build time").
pub const ROOT_ZSTD_LEVEL: &str = "6";

/// The Raspberry Pi firmware package, extracted.
struct FirmwareFiles {
    deb: PathBuf,
    /// `usr/lib/raspi-firmware` in the package.
    dir: PathBuf,
}

/// Downloads (unless cached), checks and extracts the pinned firmware.
fn firmware(cache: &Path, package: &str, version: &str, sha256: &str) -> Result<FirmwareFiles, BuildError> {
    let dest = cache.join("firmware");
    // The package is arch all; it lives in non-free-firmware, which the
    // private apt state names (the host's sources need not).
    let deb = apt::Apt::new(cache, "arm64").download(package, version, &dest)?;
    let found = kernel::sha256_file(&deb)?;
    if found != sha256 {
        return Err(BuildError::Checksum { path: deb, expected: sha256.to_string(), found });
    }
    let tree = dest.join(format!("{package}_{version}"));
    apt::extract(&deb, &tree)?;
    Ok(FirmwareFiles { deb, dir: tree.join("usr/lib/raspi-firmware") })
}

fn work_dir() -> Result<tempfile::TempDir, BuildError> {
    tempfile::tempdir().map_err(|e| BuildError::io("create temp dir in", &std::env::temp_dir(), e))
}

/// Builds the image; returns its manifest (also written next to it, as
/// `<image>.manifest.json`).
pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    let mut progress = Progress::new(7);
    let work = work_dir()?;
    let w = work.path();
    let parts = build_parts(opts, w, &mut progress)?;
    let p = &parts.board.partitions;
    let root_img = &parts.root_img;
    let fat_files: Vec<(String, PathBuf)> = match &parts.boot {
        Boot::Uki { uki_a, sdboot } => {
            progress.step("building the EFI system partition (systemd-boot)");
            let sdboot_bytes = std::fs::read(sdboot).map_err(|e| BuildError::io("read", sdboot, e))?;
            let mut uki_b = uki_a.clone();
            machinery::pe::set_uki_slot(&mut uki_b, Slot::B)
                .map_err(|e| BuildError::Tool { what: "setting slot B in the UKI".into(), detail: e.into() })?;
            // A fresh image: A preferred, B its committed fallback (the same root).
            let fresh = BootState::fresh();
            let entry = |slot: Slot| {
                let name = slots::sdboot::file_name(slot, fresh.get(slot)).unwrap_or_default();
                format!("{}/{name}", layout::EFI_LINUX_DIR.trim_start_matches('/'))
            };
            let (entry_a, entry_b) = (entry(Slot::A), entry(Slot::B));
            let boot_loader = layout::EFI_BOOT_LOADER.trim_start_matches('/');
            let loader_conf_path = layout::EFI_LOADER_CONF.trim_start_matches('/');
            let efi = disk::fat_image(
                p.efi,
                layout::EFI,
                disk::Fat::Efi,
                &[
                    (boot_loader, &sdboot_bytes),
                    (&entry_a, uki_a),
                    (&entry_b, &uki_b),
                    (loader_conf_path, LOADER_CONF.as_bytes()),
                ],
            )?;
            let efi_img = w.join("efi.img");
            write(&efi_img, &efi)?;
            vec![("efi.img".to_string(), efi_img)]
        }
        Boot::Pi { files } => {
            progress.step("building the boot partitions (autoboot.txt, BOOT-A, BOOT-B)");
            let autoboot = slots::rpi::autoboot_txt(&BootState::fresh(), Slot::A, layout::RPI_BOOT_PARTITIONS);
            let name = layout::RPI_AUTOBOOT_TXT.trim_start_matches('/');
            let boot = disk::fat_image(
                RPI_AUTOBOOT_MIB,
                layout::RPI_AUTOBOOT,
                disk::Fat::Small,
                &[(name, autoboot.as_bytes())],
            )?;
            let mut out = Vec::new();
            for (file, bytes) in [
                ("boot.img", boot),
                ("boot-a.img", rpi_boot_partition(&parts, files, Slot::A)?),
                ("boot-b.img", rpi_boot_partition(&parts, files, Slot::B)?),
            ] {
                let path = w.join(file);
                write(&path, &bytes)?;
                out.push((file.to_string(), path));
            }
            out
        }
    };
    progress.step("laying out the GPT disk image");
    let mut gpt = Vec::new();
    match &parts.boot {
        Boot::Uki { .. } => {
            gpt.push(disk::Part {
                label: layout::EFI,
                kind: disk::Kind::Esp,
                size_mib: p.efi,
                content: Some(fat_files[0].1.as_path()),
            });
        }
        Boot::Pi { .. } => {
            // Partition numbers 1, 2, 3: autoboot.txt's boot_partition
            // counts them (layout::RPI_BOOT_PARTITIONS).
            for ((label, size_mib), (_, file)) in
                [(layout::RPI_AUTOBOOT, RPI_AUTOBOOT_MIB), (layout::BOOT_A, p.efi), (layout::BOOT_B, p.efi)]
                    .into_iter()
                    .zip(&fat_files)
            {
                gpt.push(disk::Part { label, kind: disk::Kind::Fat, size_mib, content: Some(file.as_path()) });
            }
        }
    }
    // Both slots start with the same root: a fresh node has a bootable
    // fallback, and an upgrade overwrites the other one. init creates
    // STATE's and EPHEMERAL's filesystems on first boot, where it finds the
    // fresh-install marker (a flashed card's old data there is overwritten
    // by the image's zeros and the marker alike).
    let linux = |label, size_mib, content| disk::Part { label, kind: disk::Kind::Linux, size_mib, content };
    let mut markers = Vec::new();
    for label in [layout::STATE, layout::EPHEMERAL] {
        let path = w.join(format!("{label}.marker"));
        write(&path, &layout::fresh_marker(label))?;
        markers.push(path);
    }
    gpt.push(linux(layout::ROOT_A, p.root, Some(root_img.as_path())));
    gpt.push(linux(layout::ROOT_B, p.root, Some(root_img.as_path())));
    gpt.push(linux(layout::STATE, p.state, Some(markers[0].as_path())));
    gpt.push(linux(layout::EPHEMERAL, p.ephemeral_min, Some(markers[1].as_path())));
    let mut manifest = parts.manifest.clone();
    manifest.partitions = disk::write_gpt(&opts.out, &gpt)?;

    progress.step("writing the manifest");
    // Each part hashed on its own thread: the whole image's digest (its
    // zeros too) is most of the work, and the root's runs beside it.
    let mut files: Vec<(&str, &Path)> = vec![("root", root_img.as_path())];
    files.extend(fat_files.iter().map(|(name, file)| (name.as_str(), file.as_path())));
    files.push(("image", opts.out.as_path()));
    let sums: Vec<Result<PartSum, BuildError>> = std::thread::scope(|s| {
        let running: Vec<_> = files.iter().map(|&(name, file)| s.spawn(move || sum(name, file))).collect();
        running.into_iter().map(|t| t.join().expect("a digest thread panicked")).collect()
    });
    for part in sums {
        manifest.parts.push(part?);
    }
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    write(&manifest_path(&opts.out), json.as_bytes())?;
    let size = manifest.part("image").map_or(0, |p| p.size);
    progress.finish(format!("built {} ({} MiB, {})", opts.out.display(), size >> 20, parts.board.name));
    Ok(manifest)
}

/// systemd-boot's config: no menu; the first good `plinth-*` entry in its
/// order boots (see `machinery::slots`).
pub const LOADER_CONF: &str = "default plinth-*\ntimeout 0\nconsole-mode keep\neditor no\n";

/// A FAT image without its trailing free space: fatfs lays the tables,
/// the root directory and the files out from the partition's start, so
/// what follows the last used byte is free clusters, which FAT never
/// reads. Written at a partition's start, it makes the same filesystem.
pub fn trim_fat(mut image: Vec<u8>) -> Vec<u8> {
    let used = image.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    // Whole sectors.
    image.truncate(used.div_ceil(512) * 512);
    image
}

/// Builds a signed upgrade bundle (`.osb`, see `machinery::bundle`) at
/// `opts.out`: the same parts as an image's slot, signed with `key`: `uki`
/// and `root` for UEFI boards; `boot` (slot A's boot partition, FAT32,
/// without its trailing free space) and `root` for Raspberry Pi boards.
pub fn bundle(opts: &BuildOptions, key: &machinery::signing::SigningKey) -> Result<BundleManifest, BuildError> {
    use std::io::Write as _;
    let mut progress = Progress::new(5);
    let work = work_dir()?;
    let parts = build_parts(opts, work.path(), &mut progress)?;
    progress.step("signing and writing the bundle");
    let root = std::fs::read(&parts.root_img).map_err(|e| BuildError::io("read", &parts.root_img, e))?;
    let (boot_part, boot) = match &parts.boot {
        Boot::Uki { uki_a, .. } => (bundle::PART_UKI, uki_a.clone()),
        Boot::Pi { files } => (bundle::PART_BOOT, trim_fat(rpi_boot_partition(&parts, files, Slot::A)?)),
    };
    let digest = |b: &[u8]| kernel::hex(&<sha2::Sha256 as sha2::Digest>::digest(b));
    let manifest = BundleManifest {
        version: opts.version.clone(),
        board: parts.board.name.clone(),
        arch: parts.manifest.arch.clone(),
        kernel_version: parts.manifest.kernel_version.clone(),
        security_version: opts.security_version,
        parts: vec![
            BundlePart { name: boot_part.into(), size: boot.len() as u64, sha256: digest(&boot) },
            BundlePart { name: bundle::PART_ROOT.into(), size: root.len() as u64, sha256: digest(&root) },
        ],
    };
    let header = bundle::Header::sign(manifest.clone(), key);
    let tmp = PathBuf::from(format!("{}.tmp", opts.out.display()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| BuildError::io("create", &tmp, e))?;
    for chunk in [&header.encode()[..], &boot, &root] {
        f.write_all(chunk).map_err(|e| BuildError::io("write", &tmp, e))?;
    }
    f.sync_all().map_err(|e| BuildError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, &opts.out).map_err(|e| BuildError::io("rename into place", &opts.out, e))?;
    let size = std::fs::metadata(&opts.out).map_or(0, |m| m.len());
    progress.finish(format!(
        "bundle {} ({} MiB, {} {}, security version {})",
        opts.out.display(),
        size >> 20,
        parts.board.name,
        opts.version,
        opts.security_version
    ));
    Ok(manifest)
}

/// Where the manifest of an image is written: `<image>.manifest.json`.
pub fn manifest_path(image: &Path) -> PathBuf {
    PathBuf::from(format!("{}.manifest.json", image.display()))
}

/// The initramfs: `/init` (plinth-init), `/dev/console`, and the board's
/// modules with their `order` file. Nothing else: no shell, no tools.
pub fn initramfs_entries(
    opts: &BuildOptions,
    board: &Board,
    k: &kernel::Extracted,
) -> Result<Vec<cpio::Entry>, BuildError> {
    let init = opts.bin_dir.join("plinth-init");
    let mut entries = vec![
        cpio::Entry::Dir { path: "dev".into() },
        cpio::Entry::CharDev { path: "dev/console".into(), major: 5, minor: 1 },
        cpio::Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: std::fs::read(&init).map_err(|e| BuildError::io("read", &init, e))?,
        },
    ];
    let mods = layout::INITRAMFS_MODULES.trim_start_matches('/');
    let mut prefix = String::new();
    for d in mods.split('/') {
        prefix = if prefix.is_empty() { d.to_string() } else { format!("{prefix}/{d}") };
        entries.push(cpio::Entry::Dir { path: prefix.clone() });
    }
    let files = module_order(board, k)?;
    let order: String = files.iter().map(|(f, _)| format!("{f}\n")).collect();
    for (file, data) in files {
        entries.push(cpio::Entry::File { path: format!("{mods}/{file}"), mode: 0o644, data });
    }
    entries.push(cpio::Entry::File { path: format!("{mods}/order"), mode: 0o644, data: order.into_bytes() });
    Ok(entries)
}

/// The modules the initramfs carries, in load order: the board's boot
/// modules, then the container runtime's, each after its dependencies.
pub fn module_order(board: &Board, k: &kernel::Extracted) -> Result<Vec<kernel::ModuleFile>, BuildError> {
    let index = kernel::module_index(&k.modules_dir);
    let read = |name: &str| {
        let path = index.get(name)?;
        Some((path.file_name()?.to_string_lossy().into_owned(), std::fs::read(path).ok()?))
    };
    let wanted = board.kernel.modules.iter().chain(&board.kernel.runtime_modules);
    kernel::load_order(&kernel::builtin_modules(&k.modules_dir), wanted, &read)
        .map_err(|(module, needs)| BuildError::Module { board: board.name.clone(), module, needs })
}

/// Loads a board by name from `board_dir`, or from a path; returns it with
/// the file's text (baked into the root image as it is).
pub fn load_board_text(name: &str, board_dir: &Path) -> Result<(Board, String), BuildError> {
    let path = if name.ends_with(".toml") { PathBuf::from(name) } else { board_dir.join(format!("{name}.toml")) };
    let text = std::fs::read_to_string(&path).map_err(|e| BuildError::io("read board config", &path, e))?;
    Ok((Board::parse(&path.display().to_string(), &text)?, text))
}
