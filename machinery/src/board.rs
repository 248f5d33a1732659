//! Board configs (`board-configs/<name>.toml`): what an image for a board is
//! made of — architecture, boot method, kernel package, modules, console,
//! command line, partition sizes. Parsed here (no I/O: the caller reads the
//! file), used by image-builder.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Must match the file name.
    pub name: String,
    pub arch: Arch,
    pub boot: BootMethod,
    /// Serial console device, e.g. `ttyS0`.
    pub console: String,
    /// Extra kernel command-line words (init adds `plinth.slot=`).
    #[serde(default)]
    pub cmdline: String,
    pub kernel: Kernel,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// UEFI: systemd-boot and one Unified Kernel Image per slot.
    UefiUki,
}

/// The kernel, from a Debian package pinned by version and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub package: String,
    pub version: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
    /// Modules loaded by init, in this order (names without `.ko`).
    #[serde(default)]
    pub modules: Vec<String>,
}

/// Partition sizes in MiB. EPHEMERAL gets at least `ephemeral_min`, and on
/// a real disk the rest of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub efi: u64,
    pub root: u64,
    pub state: u64,
    pub ephemeral_min: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {field}: {message}")]
pub struct BoardError {
    pub file: String,
    pub field: String,
    pub message: String,
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
        if board.kernel.sha256.len() != 64 || !board.kernel.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("kernel.sha256", "must be 64 hexadecimal characters (sha256 of the .deb)".into()));
        }
        if board.kernel.package.is_empty() || board.kernel.package.contains(char::is_whitespace) {
            return Err(err("kernel.package", format!("{:?} is not a Debian package name", board.kernel.package)));
        }
        if board.console.is_empty() || board.console.contains(['/', ' ']) {
            return Err(err("console", format!("{:?} is not a device name like ttyS0", board.console)));
        }
        if board.cmdline.contains(crate::layout::CMDLINE_SLOT) {
            return Err(err("cmdline", "must not set the slot: image-builder adds it per boot entry".into()));
        }
        let p = &board.partitions;
        for (name, v, min) in
            [("efi", p.efi, 32), ("root", p.root, 16), ("state", p.state, 8), ("ephemeral_min", p.ephemeral_min, 32)]
        {
            if v < min {
                return Err(err(&format!("partitions.{name}"), format!("{v} MiB is too small (at least {min})")));
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

    #[test]
    fn parses_a_board() {
        let b = Board::parse("test.toml", GOOD).unwrap();
        assert_eq!(b.arch.debian(), "amd64");
        assert_eq!(b.cmdline_for(crate::layout::Slot::B), "console=ttyS0 plinth.slot=b quiet");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = Board::parse("x.toml", &GOOD.replace("9001", "zz01")).unwrap_err();
        assert_eq!((e.file.as_str(), e.field.as_str()), ("x.toml", "kernel.sha256"));
        let e = Board::parse("x.toml", &GOOD.replace("root = 128", "root = 1")).unwrap_err();
        assert_eq!(e.field, "partitions.root");
        let e = Board::parse("x.toml", &GOOD.replace("quiet", "plinth.slot=a")).unwrap_err();
        assert_eq!(e.field, "cmdline");
        let e = Board::parse("x.toml", &GOOD.replace("console = ", "consle = ")).unwrap_err();
        assert!(e.message.contains("unknown field `consle`"), "{e}");
        assert_eq!(e.field, "line 5");
    }

    #[test]
    fn the_shipped_boards_parse() {
        for name in ["qemu-x86_64", "x86_64-uefi"] {
            let path = format!("{}/../board-configs/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let b = Board::parse(&path, &text).unwrap();
            assert_eq!(b.name, name);
        }
    }
}
