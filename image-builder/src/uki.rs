//! Unified Kernel Images: systemd's EFI stub with the os-release, the
//! command line, the kernel and the initramfs added as PE sections by
//! objcopy (what `ukify` does, without Python), placed after the stub's own
//! sections with `machinery::pe`.

use std::path::Path;
use std::process::Command;

use machinery::pe::parse_pe;

use crate::BuildError;
use crate::tools;

/// systemd-boot-efi's stub for x86-64.
pub const STUB_X64: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

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

/// Builds a UKI at `out`, stamped with `time` (Unix seconds: the build's
/// [`crate::build_time`], so that the same inputs give the same bytes and
/// an upgrade does not send an unchanged UKI again). The added sections
/// are laid out one after the other past the stub's own image, page
/// aligned, so none overlaps another whatever their sizes (the fixed
/// addresses in older recipes break once a kernel or initramfs outgrows
/// its gap).
pub fn build(parts: &UkiParts<'_>, out: &Path, time: u64) -> Result<(), BuildError> {
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
    tools::run(&mut cmd)?;
    let mut image = std::fs::read(out).map_err(|e| BuildError::io("read", out, e))?;
    machinery::pe::set_timestamp(&mut image, u32::try_from(time).unwrap_or(u32::MAX)).ok_or_else(|| {
        BuildError::Tool { what: format!("stamping {}", out.display()), detail: "objcopy wrote no PE image".into() }
    })?;
    std::fs::write(out, image).map_err(|e| BuildError::io("write", out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        build(&parts, &out, 1_700_000_000).unwrap();
        let image = std::fs::read(&out).unwrap();
        // objcopy stamps the time it runs: a second build a second later
        // is the same file all the same.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let again = d.path().join("again.efi");
        build(&parts, &again, 1_700_000_000).unwrap();
        assert!(std::fs::read(&again).unwrap() == image, "two builds of the same inputs differ");
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
