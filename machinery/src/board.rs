//! Board configs (`board-configs/<name>.toml`): what an image for a board is
//! made of — architecture, boot method, kernel package, modules, console,
//! command line, partition sizes, and for Raspberry Pis the firmware files.
//! Parsed and checked here (no I/O: the caller reads the file), used by
//! image-builder; the file itself is baked into the root image
//! ([`crate::layout::ROOT_BOARD`]).
//!
//! ```toml
//! name = "qemu-x86_64"
//! arch = "x86_64"              # or "aarch64"
//! boot = "uefi-uki"            # or "rpi-firmware"
//! console = "ttyS0"
//! cmdline = "panic=10"         # image-builder adds console= and plinth.slot=
//!
//! [kernel]                     # a Debian package, pinned
//! package = "linux-image-6.1.0-53-cloud-amd64-unsigned"
//! version = "6.1.187-1"
//! sha256 = "…"                 # of the .deb
//! modules = ["virtio_ring", …] # loaded by init, in this order
//! runtime_modules = ["overlay", …] # for containerd and CNI, after those
//! devicetrees = []             # rpi-firmware: DTBs from the kernel package
//!
//! [firmware]                   # rpi-firmware only; package, version, sha256
//! package = "raspi-firmware"   # and files: all or none (Pi 5: EEPROM; QEMU)
//! version = "…"
//! sha256 = "…"
//! files = ["start4.elf", "fixup4.dat"]
//! config = ["arm_64bit=1"]     # config.txt lines
//!
//! [partitions]                 # MiB
//! efi = 64                     # the FAT boot partition
//! root = 128                   # each of ROOT-A and ROOT-B
//! state = 16
//! ephemeral_min = 256
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// The board's name; by convention its file name without `.toml`.
    pub name: String,
    pub arch: Arch,
    pub boot: BootMethod,
    /// Serial console, as the kernel's `console=` takes it (`ttyS0`,
    /// `ttyS1,115200`).
    pub console: String,
    /// Extra kernel command-line words (image-builder adds `console=` and
    /// `plinth.slot=`).
    #[serde(default)]
    pub cmdline: String,
    pub kernel: Kernel,
    /// Boot firmware from a Debian package (`rpi-firmware` boards only).
    #[serde(default)]
    pub firmware: Option<Firmware>,
    pub partitions: Partitions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Debian's multiarch triple (`/usr/lib/<triple>/…`).
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    /// The UEFI removable-media boot path's file name (`BOOTX64.EFI`).
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Aarch64 => "BOOTAA64.EFI",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// UEFI: systemd-boot and one Unified Kernel Image per slot, A/B by
    /// boot counting.
    UefiUki,
    /// Raspberry Pi 4/5: the GPU firmware reads `config.txt` and loads the
    /// kernel itself; A/B with `autoboot.txt` (`tryboot_a_b=1`).
    RpiFirmware,
}

/// The kernel, from a Debian package pinned by version and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub package: String,
    pub version: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
    /// Modules loaded by init, in this order (names without `.ko`); each
    /// module's dependencies are added before it.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Modules the container runtime needs (overlayfs, bridge, veth,
    /// netfilter for the CNI plugins' NAT), loaded after `modules`.
    #[serde(default)]
    pub runtime_modules: Vec<String>,
    /// Device trees to put on the boot partition, relative to the package's
    /// `usr/lib/linux-image-<release>/` (e.g. `broadcom/bcm2711-rpi-4-b.dtb`).
    #[serde(default)]
    pub devicetrees: Vec<String>,
}

/// What the Raspberry Pi firmware reads (`rpi-firmware` boards): the
/// firmware files from a Debian package, pinned like the kernel, and the
/// `config.txt` lines. A Pi 5 keeps its firmware in the EEPROM and
/// `arm64-virt` has none (the QEMU harness plays the firmware): they name
/// no package and no files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Files from the package's firmware directory, copied to the boot
    /// partition's top level.
    #[serde(default)]
    pub files: Vec<String>,
    /// Lines of `config.txt` (the kernel, initramfs and cmdline lines are
    /// added by image-builder).
    #[serde(default)]
    pub config: Vec<String>,
}

impl Firmware {
    /// The pinned firmware package, when the board has one.
    pub fn pin(&self) -> Option<(&str, &str, &str)> {
        Some((self.package.as_deref()?, self.version.as_deref()?, self.sha256.as_deref()?))
    }
}

/// Partition sizes in MiB. EPHEMERAL gets at least `ephemeral_min`, and on
/// a real disk the rest of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// The FAT boot partition (`EFI`): boot loader, kernels, firmware.
    pub efi: u64,
    /// Each of `ROOT-A` and `ROOT-B`.
    pub root: u64,
    pub state: u64,
    pub ephemeral_min: u64,
}

/// A problem with a board file: the file, the field (or `line N` when the
/// TOML itself is wrong) and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {field}: {message}")]
pub struct BoardError {
    pub file: String,
    pub field: String,
    pub message: String,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A Debian package name: lowercase letters, digits and `+-.`.
fn is_package(s: &str) -> bool {
    s.len() >= 2
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// A file name or a relative path inside a package, without `..`.
fn is_relative_path(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.contains(char::is_whitespace)
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl Board {
    /// Parses and checks a board file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Board, BoardError> {
        let err =
            |field: &str, message: String| BoardError { file: file.to_string(), field: field.to_string(), message };
        let board: Board = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| {
                let before = &text[..s.start.min(text.len())];
                format!("line {}", before.matches('\n').count() + 1)
            });
            err(&at.unwrap_or_default(), e.message().trim_end().to_string())
        })?;
        if board.name.is_empty() || !board.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
            return Err(err("name", format!("{:?}: use letters, digits, - and _ (like qemu-x86_64)", board.name)));
        }
        check_package(&board.kernel.package, &board.kernel.version, &board.kernel.sha256, "kernel")
            .map_err(|(field, message)| err(&field, message))?;
        let mut seen = std::collections::BTreeSet::new();
        let lists = [("modules", &board.kernel.modules), ("runtime_modules", &board.kernel.runtime_modules)];
        for (list, modules) in lists {
            for (i, m) in modules.iter().enumerate() {
                let field = format!("kernel.{list}[{i}]");
                if m.is_empty()
                    || m.ends_with(".ko")
                    || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                {
                    return Err(err(&field, format!("{m:?} is not a module name (like virtio_blk, without .ko)")));
                }
                // The kernel treats - and _ alike in module names.
                if !seen.insert(m.replace('-', "_")) {
                    return Err(err(&field, format!("{m:?} is listed twice")));
                }
            }
        }
        for (i, d) in board.kernel.devicetrees.iter().enumerate() {
            if !is_relative_path(d) || !d.ends_with(".dtb") {
                return Err(err(
                    &format!("kernel.devicetrees[{i}]"),
                    format!("{d:?} is not a .dtb path inside the kernel package (like broadcom/bcm2711-rpi-4-b.dtb)"),
                ));
            }
        }
        if board.console.is_empty() || board.console.contains(['/', ' ', '=']) {
            return Err(err("console", format!("{:?} is not a console like ttyS0 or ttyS1,115200", board.console)));
        }
        if board.cmdline.contains(crate::layout::CMDLINE_SLOT) {
            return Err(err("cmdline", "must not set the slot: image-builder adds it per boot entry".into()));
        }
        if board.cmdline.split_whitespace().any(|w| w.starts_with("console=")) {
            return Err(err("cmdline", "must not set console=: use the `console` field".into()));
        }
        match (board.boot, &board.firmware) {
            (BootMethod::UefiUki, Some(_)) => {
                return Err(err("firmware", "only rpi-firmware boards carry firmware: remove [firmware]".into()));
            }
            (BootMethod::RpiFirmware, None) => {
                return Err(err("firmware", "an rpi-firmware board needs a [firmware] table".into()));
            }
            (BootMethod::RpiFirmware, Some(fw)) => {
                if board.arch != Arch::Aarch64 {
                    return Err(err("arch", "rpi-firmware boards are aarch64 (Plinth boots Pis 64-bit only)".into()));
                }
                match (&fw.package, &fw.version, &fw.sha256) {
                    (Some(package), Some(version), Some(sha256)) => {
                        check_package(package, version, sha256, "firmware")
                            .map_err(|(field, message)| err(&field, message))?;
                        if fw.files.is_empty() {
                            return Err(err(
                                "firmware.files",
                                "list the firmware files (start4.elf, fixup4.dat…)".into(),
                            ));
                        }
                        // The GPU firmware loads the device tree itself.
                        if board.kernel.devicetrees.is_empty() {
                            return Err(err(
                                "kernel.devicetrees",
                                "the Pi firmware needs the board's device tree".into(),
                            ));
                        }
                    }
                    (None, None, None) if fw.files.is_empty() => {}
                    (None, None, None) => {
                        return Err(err(
                            "firmware.package",
                            "firmware.files come from a package: pin package, version and sha256".into(),
                        ));
                    }
                    _ => {
                        return Err(err(
                            "firmware",
                            "pin the firmware package with all of package, version and sha256, or none of them (firmware in EEPROM)".into(),
                        ));
                    }
                }
                for (i, f) in fw.files.iter().enumerate() {
                    if !is_relative_path(f) {
                        return Err(err(&format!("firmware.files[{i}]"), format!("{f:?} is not a file name")));
                    }
                }
                for (i, l) in fw.config.iter().enumerate() {
                    if !l.contains('=') || l.contains('\n') {
                        return Err(err(&format!("firmware.config[{i}]"), format!("{l:?} is not a key=value line")));
                    }
                    let key = l.split('=').next().unwrap_or_default().trim();
                    if ["kernel", "initramfs", "cmdline", "os_prefix"].contains(&key) {
                        return Err(err(
                            &format!("firmware.config[{i}]"),
                            format!("{key} is set by image-builder per slot: remove it"),
                        ));
                    }
                }
            }
            (BootMethod::UefiUki, None) => {}
        }
        let p = &board.partitions;
        for (name, v, min) in
            [("efi", p.efi, 32), ("root", p.root, 16), ("state", p.state, 8), ("ephemeral_min", p.ephemeral_min, 32)]
        {
            if v < min {
                return Err(err(&format!("partitions.{name}"), format!("{v} MiB is too small (at least {min})")));
            }
            if v > 1 << 20 {
                return Err(err(
                    &format!("partitions.{name}"),
                    format!("{v} MiB: sizes are in MiB, this is over 1 TiB"),
                ));
            }
        }
        Ok(board)
    }

    /// The kernel command line of one slot's boot entry.
    pub fn cmdline_for(&self, slot: crate::layout::Slot) -> String {
        let mut c = format!("console={} {}{}", self.console, crate::layout::CMDLINE_SLOT, slot.name());
        if !self.cmdline.is_empty() {
            c.push(' ');
            c.push_str(&self.cmdline);
        }
        c
    }
}

/// Checks a pinned package; the error is (field, message).
fn check_package(package: &str, version: &str, sha256: &str, table: &str) -> Result<(), (String, String)> {
    if !is_package(package) {
        return Err((format!("{table}.package"), format!("{package:?} is not a Debian package name")));
    }
    if version.is_empty() || version.contains(char::is_whitespace) || version.contains(['/', '=']) {
        return Err((format!("{table}.version"), format!("{version:?} is not a Debian version (like 6.1.187-1)")));
    }
    if !is_sha256(sha256) {
        return Err((
            format!("{table}.sha256"),
            "must be 64 lowercase hexadecimal characters (sha256 of the .deb)".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "test"
arch = "x86_64"
boot = "uefi-uki"
console = "ttyS0"
cmdline = "quiet"

[kernel]
package = "linux-image-6.1.0-53-cloud-amd64-unsigned"
version = "6.1.187-1"
sha256 = "9001721c6ba33401f95bbeeb0e41ec91ce2cdb5aaceac6133cb9d093734bba0e"
modules = ["virtio", "virtio_blk"]

[partitions]
efi = 64
root = 128
state = 16
ephemeral_min = 256
"#;

    const RPI: &str = r#"
name = "pi"
arch = "aarch64"
boot = "rpi-firmware"
console = "ttyS1,115200"

[kernel]
package = "linux-image-6.1.0-53-arm64-unsigned"
version = "6.1.187-1"
sha256 = "0e5b59e543be13576d9850f29c827292ddfbcf9ef26ed9bccbadf20f5dca0e74"
modules = ["sdhci-iproc"]
devicetrees = ["broadcom/bcm2711-rpi-4-b.dtb"]

[firmware]
package = "raspi-firmware"
version = "1.20220830+ds-1"
sha256 = "0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62"
files = ["start4.elf", "fixup4.dat"]
config = ["arm_64bit=1", "enable_uart=1"]

[partitions]
efi = 128
root = 256
state = 64
ephemeral_min = 1024
"#;

    fn field(text: &str) -> String {
        Board::parse("x.toml", text).unwrap_err().field
    }

    #[test]
    fn parses_a_board() {
        let b = Board::parse("test.toml", GOOD).unwrap();
        assert_eq!(b.arch.debian(), "amd64");
        assert_eq!(b.cmdline_for(crate::layout::Slot::B), "console=ttyS0 plinth.slot=b quiet");
        assert_eq!(b.firmware, None);
        let pi = Board::parse("pi.toml", RPI).unwrap();
        assert_eq!((pi.boot, pi.arch.debian()), (BootMethod::RpiFirmware, "arm64"));
        assert_eq!(pi.firmware.as_ref().unwrap().files, ["start4.elf", "fixup4.dat"]);
        assert_eq!(pi.cmdline_for(crate::layout::Slot::A), "console=ttyS1,115200 plinth.slot=a");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = Board::parse("x.toml", &GOOD.replace("9001", "zz01")).unwrap_err();
        assert_eq!((e.file.as_str(), e.field.as_str()), ("x.toml", "kernel.sha256"));
        assert_eq!(
            e.to_string(),
            "x.toml: kernel.sha256: must be 64 lowercase hexadecimal characters (sha256 of the .deb)"
        );
        assert_eq!(field(&GOOD.replace("root = 128", "root = 1")), "partitions.root");
        assert_eq!(field(&GOOD.replace("efi = 64", "efi = 4000000")), "partitions.efi");
        assert_eq!(field(&GOOD.replace("quiet", "plinth.slot=a")), "cmdline");
        assert_eq!(field(&GOOD.replace("quiet", "console=tty0")), "cmdline");
        assert_eq!(field(&GOOD.replace("\"virtio\"", "\"virtio.ko\"")), "kernel.modules[0]");
        assert_eq!(field(&GOOD.replace("\"virtio\"", "\"virtio_blk\"")), "kernel.modules[1]");
        let runtime = GOOD.replace("modules = [", "runtime_modules = [\"overlay\", \"virtio\"]\nmodules = [");
        assert_eq!(field(&runtime), "kernel.runtime_modules[1]");
        assert_eq!(field(&GOOD.replace("linux-image-6.1.0-53", "Linux Image")), "kernel.package");
        assert_eq!(field(&GOOD.replace("6.1.187-1", "")), "kernel.version");
        assert_eq!(field(&GOOD.replace("name = \"test\"", "name = \"a b\"")), "name");
        assert_eq!(field(&GOOD.replace("ttyS0", "/dev/ttyS0")), "console");
        // A typo is an error, not an ignored key, and names its line.
        let e = Board::parse("x.toml", &GOOD.replace("console = ", "consle = ")).unwrap_err();
        assert!(e.message.contains("unknown field `consle`"), "{e}");
        assert_eq!(e.field, "line 5");
        let e = Board::parse("x.toml", &GOOD.replace("uefi-uki", "grub")).unwrap_err();
        assert!(e.message.contains("unknown variant `grub`"), "{e}");
        assert_eq!(e.field, "line 4");
        let e = Board::parse("x.toml", &GOOD.replace("state = 16\n", "")).unwrap_err();
        assert!(e.message.contains("missing field `state`"), "{e}");
    }

    #[test]
    fn boot_method_and_firmware_agree() {
        let fw = &RPI[RPI.find("[firmware]").unwrap()..RPI.find("[partitions]").unwrap()];
        assert_eq!(field(&GOOD.replace("[partitions]", &format!("{fw}[partitions]"))), "firmware");
        assert_eq!(field(&RPI.replace(fw, "")), "firmware");
        assert_eq!(field(&RPI.replace("aarch64", "x86_64")), "arch");
        assert_eq!(field(&RPI.replace("devicetrees = [\"broadcom/bcm2711-rpi-4-b.dtb\"]", "")), "kernel.devicetrees");
        assert_eq!(field(&RPI.replace("broadcom/bcm2711", "../bcm2711")), "kernel.devicetrees[0]");
        assert_eq!(field(&RPI.replace("\"fixup4.dat\"", "\"/boot/fixup4.dat\"")), "firmware.files[1]");
        assert_eq!(field(&RPI.replace("\"enable_uart=1\"", "\"kernel=vmlinuz\"")), "firmware.config[1]");
        assert_eq!(field(&RPI.replace("\"arm_64bit=1\"", "\"arm_64bit\"")), "firmware.config[0]");
        assert_eq!(field(&RPI.replace("0094ced4", "0094CED4")), "firmware.sha256");
        // Firmware in EEPROM (Pi 5) or none (QEMU): no package, no files.
        let no_package = RPI
            .replace("package = \"raspi-firmware\"\n", "")
            .replace("version = \"1.20220830+ds-1\"\n", "")
            .replace("sha256 = \"0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62\"\n", "");
        assert_eq!(field(&no_package), "firmware.package", "files without a package");
        let eeprom = no_package.replace("files = [\"start4.elf\", \"fixup4.dat\"]\n", "");
        let b = Board::parse("x.toml", &eeprom).unwrap();
        assert_eq!(b.firmware.as_ref().and_then(Firmware::pin), None);
        let b =
            Board::parse("x.toml", &eeprom.replace("devicetrees = [\"broadcom/bcm2711-rpi-4-b.dtb\"]", "")).unwrap();
        assert!(b.kernel.devicetrees.is_empty(), "QEMU builds its own device tree");
        assert_eq!(field(&RPI.replace("version = \"1.20220830+ds-1\"\n", "")), "firmware");
        let pi = Board::parse("x.toml", RPI).unwrap();
        assert_eq!(pi.firmware.as_ref().and_then(Firmware::pin).map(|p| p.0), Some("raspi-firmware"));
    }

    #[test]
    fn the_shipped_boards_parse() {
        let dir = format!("{}/../board-configs", env!("CARGO_MANIFEST_DIR"));
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let b = Board::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(Some(b.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "name = file name");
                names.push(b.name);
            }
        }
        names.sort();
        assert_eq!(names, ["arm64-virt", "qemu-x86_64", "rpi4", "x86_64-uefi"]);
    }
}
