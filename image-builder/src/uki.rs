//! Unified Kernel Images: systemd's EFI stub with the os-release, the
//! command line, the kernel and the initramfs added as PE sections by
//! objcopy (what `ukify` does, without Python). Also a small PE section
//! table reader, to place the sections after the stub's own and to check
//! the result.

use std::path::Path;
use std::process::Command;

use crate::BuildError;
use crate::tools;

/// systemd-boot-efi's stub for x86-64.
pub const STUB_X64: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// One section of a PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    /// Relative virtual address.
    pub vma: u64,
    /// Size in memory.
    pub size: u64,
    /// Where its bytes are in the file, and how many.
    pub file_offset: u64,
    pub file_size: u64,
}

/// A parsed PE (32 or 32+) image: its size in memory and its sections.
#[derive(Debug, Clone)]
pub struct Pe {
    pub size_of_image: u64,
    pub sections: Vec<Section>,
}

impl Pe {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The bytes of a section.
    pub fn data<'a>(&self, image: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let s = self.section(name)?;
        // In the file a section is padded to the file alignment; the
        // virtual size is what was added.
        let len = s.size.min(s.file_size) as usize;
        image.get(s.file_offset as usize..s.file_offset as usize + len)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the section table of a PE image; `None` if it is not one.
pub fn parse_pe(image: &[u8]) -> Option<Pe> {
    if image.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(image, 0x3c)? as usize;
    if image.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let coff = pe + 4;
    let nsections = u16_at(image, coff + 2)? as usize;
    let opt_size = u16_at(image, coff + 16)? as usize;
    let opt = coff + 20;
    // SizeOfImage is at the same offset in PE32 and PE32+.
    let size_of_image = u32_at(image, opt + 56)? as u64;
    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let h = table + i * 40;
        let raw = image.get(h..h + 8)?;
        let name = String::from_utf8_lossy(raw).trim_end_matches('\0').to_string();
        sections.push(Section {
            name,
            size: u32_at(image, h + 8)? as u64,
            vma: u32_at(image, h + 12)? as u64,
            file_size: u32_at(image, h + 16)? as u64,
            file_offset: u32_at(image, h + 20)? as u64,
        });
    }
    Some(Pe { size_of_image, sections })
}

/// What goes into a UKI.
#[derive(Debug)]
pub struct UkiParts<'a> {
    pub stub: &'a Path,
    pub os_release: &'a Path,
    pub cmdline: &'a Path,
    pub linux: &'a Path,
    pub initrd: &'a Path,
}

const ALIGN: u64 = 0x1000;

fn align(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

/// Builds a UKI at `out`. The added sections are laid out one after the
/// other past the stub's own image, page aligned, so none overlaps another
/// whatever their sizes (the fixed addresses in older recipes break once a
/// kernel or initramfs outgrows its gap).
pub fn build(parts: &UkiParts<'_>, out: &Path) -> Result<(), BuildError> {
    let objcopy = tools::require("objcopy", "binutils")?;
    let stub = std::fs::read(parts.stub).map_err(|e| BuildError::io("read", parts.stub, e))?;
    let pe = parse_pe(&stub).ok_or_else(|| BuildError::Tool {
        what: format!("reading {}", parts.stub.display()),
        detail: "not a PE image".into(),
    })?;
    let mut at = align(pe.size_of_image);
    let mut cmd = Command::new(objcopy);
    for (name, file) in
        [(".osrel", parts.os_release), (".cmdline", parts.cmdline), (".linux", parts.linux), (".initrd", parts.initrd)]
    {
        let len = std::fs::metadata(file).map_err(|e| BuildError::io("stat", file, e))?.len();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={at:#x}"));
        at = align(at + len.max(1));
    }
    cmd.arg(parts.stub).arg(out);
    tools::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pe_refuses_what_is_not_pe() {
        assert!(parse_pe(b"").is_none());
        assert!(parse_pe(b"MZ").is_none());
        assert!(parse_pe(&[b'M', b'Z', 0, 0, 0, 0, 0, 0]).is_none());
    }

    /// Needs binutils and systemd-boot-efi (scripts/setup-debian.sh); with
    /// CI=true their absence is a failure.
    #[test]
    fn uki_has_the_four_sections_in_order_without_overlap() {
        if !Path::new(STUB_X64).exists() || tools::require("objcopy", "binutils").is_err() {
            assert!(std::env::var("CI").is_err(), "CI: {STUB_X64} or objcopy missing: run scripts/setup-debian.sh");
            eprintln!("skipped: {STUB_X64} or objcopy missing (scripts/setup-debian.sh)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let f = |name: &str, data: Vec<u8>| {
            let p = d.path().join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let osrel = f("osrel", b"ID=plinth\n".to_vec());
        let cmdline = f("cmdline", b"console=ttyS0 plinth.slot=b".to_vec());
        // A "kernel" bigger than the gaps of the fixed-address recipe.
        let linux = f("linux", (0..20 << 20).map(|i| (i % 251) as u8).collect());
        let initrd = f("initrd", b"070701".repeat(1000));
        let out = d.path().join("uki.efi");
        let parts = UkiParts {
            stub: Path::new(STUB_X64),
            os_release: &osrel,
            cmdline: &cmdline,
            linux: &linux,
            initrd: &initrd,
        };
        build(&parts, &out).unwrap();
        let image = std::fs::read(&out).unwrap();
        let pe = parse_pe(&image).unwrap();
        let names: Vec<&str> = pe.sections.iter().map(|s| s.name.as_str()).collect();
        let added = &names[names.len() - 4..];
        assert_eq!(added, [".osrel", ".cmdline", ".linux", ".initrd"], "{names:?}");
        assert_eq!(pe.data(&image, ".cmdline").unwrap(), b"console=ttyS0 plinth.slot=b");
        assert_eq!(pe.data(&image, ".osrel").unwrap(), b"ID=plinth\n");
        assert_eq!(pe.data(&image, ".linux").unwrap(), std::fs::read(&linux).unwrap().as_slice());
        let mut spans: Vec<(u64, u64)> = pe.sections.iter().map(|s| (s.vma, s.vma + s.size)).collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "sections overlap: {:?}", pe.sections);
        assert!(pe.size_of_image >= spans.last().unwrap().1, "SizeOfImage covers the sections");
        // objdump agrees (it is what a person would check with).
        let o = Command::new("objdump").arg("-h").arg(&out).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(".linux") && text.contains(".initrd"), "{text}");
    }
}
