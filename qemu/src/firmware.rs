//! The harness as the Raspberry Pi firmware, for images with the Pi's
//! layout (`rpi4` under `-M raspi4b`, `arm64-virt` under `-M virt`). QEMU
//! does not run the Pi's boot loader or GPU firmware, so before each boot
//! the harness does what they do with the disk: read `autoboot.txt` from
//! partition 1, pick `boot_partition` — or the `[tryboot]` one when the
//! guest rebooted with `"0 tryboot"` — and read `config.txt`, the kernel,
//! the initramfs, the device tree and `cmdline.txt` from that partition.
//! QEMU then boots them with `-kernel -initrd -dtb -append`.
//!
//! Unproved here, and left to a real board: the EEPROM boot loader's own
//! reading of GPT and FAT, `start4.elf`, the firmware's one-shot tryboot
//! flag (the harness keeps it per reboot from the kernel's restart
//! message), `config.txt` keys other than the four read here, and device
//! tree overlays.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use machinery::layout::{self, Slot};
use machinery::slots;
use partition_window::Window;

/// The kernel's console message for `reboot(2)` with an argument; the
/// tryboot argument makes the next boot the `[tryboot]` partition's.
pub const TRYBOOT_RESTART: &str = "Restarting system with command '0 tryboot'";

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Disk { path: PathBuf, what: String },
}

/// What the firmware hands the kernel for one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// The slot whose boot partition was read.
    pub slot: Slot,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub dtb: Option<PathBuf>,
    pub cmdline: String,
}

/// Reads a whole file from FAT partition `number` (1-based) of `disk`.
fn read_fat_file(disk: &Path, number: u32, name: &str) -> Result<Vec<u8>, FirmwareError> {
    let bad = |what: String| FirmwareError::Disk { path: disk.to_path_buf(), what };
    let gpt = gpt::GptConfig::new().writable(false).open(disk).map_err(|e| bad(format!("GPT: {e}")))?;
    let p = gpt.partitions().get(&number).ok_or_else(|| bad(format!("no partition {number}")))?;
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let (start, len) = (p.bytes_start(lb).unwrap_or(0), p.bytes_len(lb).unwrap_or(0));
    let file =
        std::fs::File::open(disk).map_err(|source| FirmwareError::Io { op: "open", path: disk.into(), source })?;
    let fs = fatfs::FileSystem::new(Window::new(file, start, len), fatfs::FsOptions::new())
        .map_err(|e| bad(format!("partition {number} ({}): not FAT: {e}", p.name)))?;
    let mut data = Vec::new();
    fs.root_dir()
        .open_file(name.trim_start_matches('/'))
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| bad(format!("partition {number} ({}): {name}: {e}", p.name)))?;
    Ok(data)
}

/// The files `config.txt` names: (kernel, initramfs, cmdline file), with
/// the firmware's defaults for a 64-bit kernel.
pub fn config_files(config: &str) -> (String, Option<String>, String) {
    let (mut kernel, mut initrd, mut cmdline) = ("kernel8.img".to_string(), None, "cmdline.txt".to_string());
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') && line != "[all]" {
            // Conditional sections other than [all] do not apply to the
            // boards we emulate; the image writes none.
            continue;
        }
        if let Some(v) = line.strip_prefix("kernel=") {
            kernel = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("cmdline=") {
            cmdline = v.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initrd = rest.split_whitespace().next().map(str::to_string);
        }
    }
    (kernel, initrd, cmdline)
}

/// Plays the firmware: picks the slot from `autoboot.txt` (`tryboot`: the
/// previous boot ended with a tryboot reboot) and copies its kernel,
/// initramfs, command line and device tree `dtb_name` (if any) into `out`.
pub fn load(disk: &Path, tryboot: bool, dtb_name: Option<&str>, out: &Path) -> Result<BootFiles, FirmwareError> {
    let bad = |what: String| FirmwareError::Disk { path: disk.to_path_buf(), what };
    let autoboot = read_fat_file(disk, 1, layout::RPI_AUTOBOOT_TXT)?;
    let text = String::from_utf8_lossy(&autoboot);
    let parts = layout::RPI_BOOT_PARTITIONS;
    let (committed, trial) = slots::rpi::parse(&text, parts)
        .ok_or_else(|| bad(format!("autoboot.txt names no boot partition: {text:?}")))?;
    let slot = if tryboot { trial } else { committed };
    let number = if slot == Slot::A { parts.0 } else { parts.1 };
    let config = String::from_utf8_lossy(&read_fat_file(disk, number, "config.txt")?).into_owned();
    let (kernel_name, initrd_name, cmdline_name) = config_files(&config);
    let write = |name: &str, data: &[u8]| -> Result<PathBuf, FirmwareError> {
        let path = out.join(name);
        std::fs::write(&path, data).map_err(|source| FirmwareError::Io { op: "write", path: path.clone(), source })?;
        Ok(path)
    };
    let kernel = write("boot-kernel", &read_fat_file(disk, number, &kernel_name)?)?;
    let initrd = match initrd_name {
        Some(n) => Some(write("boot-initrd", &read_fat_file(disk, number, &n)?)?),
        None => None,
    };
    let dtb = match dtb_name {
        Some(n) => Some(write("boot.dtb", &read_fat_file(disk, number, n)?)?),
        None => None,
    };
    let cmdline = String::from_utf8_lossy(&read_fat_file(disk, number, &cmdline_name)?).trim().to_string();
    Ok(BootFiles { slot, kernel, initrd, dtb, cmdline })
}

/// Runs an fdt tool (`fdtget`, `fdtput`) on `dtb`; its output.
fn fdt(dtb: &Path, tool: &str, args: &[&str]) -> Result<String, FirmwareError> {
    let out = std::process::Command::new(tool).args(args).output().map_err(|source| FirmwareError::Io {
        op: "run (apt install device-tree-compiler)",
        path: PathBuf::from(tool),
        source,
    })?;
    if !out.status.success() {
        return Err(FirmwareError::Disk {
            path: dtb.to_path_buf(),
            what: format!("{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The device tree nodes QEMU's `raspi4b` does not emulate and a Debian
/// kernel faults on (a synchronous external abort in the l2-intc, then the
/// HDMI i2c): every `/soc` node at `0x7ef…`. Disabled in the harness's copy
/// of the DTB only — never in the image a real Pi boots.
pub fn disable_unemulated_nodes(dtb: &Path) -> Result<Vec<String>, FirmwareError> {
    let file = dtb.to_string_lossy();
    let mut disabled = Vec::new();
    for n in fdt(dtb, "fdtget", &["-l", &file, "/soc"])?.lines().filter(|n| n.contains("@7ef")) {
        let node = format!("/soc/{n}");
        fdt(dtb, "fdtput", &["-t", "s", &file, &node, "status", "disabled"])?;
        disabled.push(node);
    }
    Ok(disabled)
}

/// The Pi 4's USB-C port: a DesignWare OTG controller (dwc2) that the
/// upstream device tree makes a USB device (`dr_mode = "peripheral"`).
pub const DWC2_NODE: &str = "/soc/usb@7e980000";
/// The Arasan SDHCI (the Pi 4's Wi-Fi SDIO). QEMU's raspi4b attaches its SD
/// card here, not to emmc2 (the Pi 4's SD slot).
pub const ARASAN_NODE: &str = "/soc/mmc@7e300000";
/// The power manager's watchdog: QEMU's resets the machine as soon as it is
/// started instead of counting down, so the first pet is a reset.
pub const PM_WATCHDOG_NODE: &str = "/soc/watchdog@7e100000";

/// The harness's copy of `bcm2711-rpi-4-b.dtb` made bootable under QEMU's
/// raspi4b (the image keeps the real one): [`DWC2_NODE`] in host mode, as
/// QEMU has no Ethernet (GENET) and no PCIe and its only way out is a
/// `usb-net` on that controller; [`ARASAN_NODE`] without its `mmc-pwrseq`
/// (the Wi-Fi power sequence drives a GPIO of the firmware's expander,
/// which QEMU does not emulate, so the SD card would never appear);
/// [`PM_WATCHDOG_NODE`] disabled; then [`disable_unemulated_nodes`].
/// Returns the nodes disabled.
pub fn adjust_for_raspi4b(dtb: &Path) -> Result<Vec<String>, FirmwareError> {
    let file = dtb.to_string_lossy();
    fdt(dtb, "fdtput", &["-t", "s", &file, DWC2_NODE, "dr_mode", "host"])?;
    fdt(dtb, "fdtput", &["-d", &file, ARASAN_NODE, "mmc-pwrseq"])?;
    fdt(dtb, "fdtput", &["-t", "s", &file, PM_WATCHDOG_NODE, "status", "disabled"])?;
    let mut disabled = vec![PM_WATCHDOG_NODE.to_string()];
    disabled.extend(disable_unemulated_nodes(dtb)?);
    Ok(disabled)
}

/// The console QEMU's raspi4b can carry: the PL011 (`ttyAMA0`). A real Pi
/// 4's console is the mini UART on GPIO 14/15 (`ttyS1`, the `rpi4`
/// board's), but QEMU's mini UART raises its interrupt without end once
/// the 8250 driver opens it (a soft lockup in `serial8250_do_startup`), so
/// the harness points the kernel's `console=` at the PL011 instead.
pub const RASPI4B_CONSOLE: &str = "console=ttyAMA0,115200";

/// `cmdline` with its `console=` arguments replaced by [`RASPI4B_CONSOLE`].
pub fn raspi4b_cmdline(cmdline: &str) -> String {
    let rest = cmdline.split_whitespace().filter(|a| !a.starts_with("console="));
    std::iter::once(RASPI4B_CONSOLE).chain(rest).collect::<Vec<_>>().join(" ")
}

/// How a boot ended, from the serial console it printed (QEMU, run with
/// `-no-reboot`, exits on every guest reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `reboot(2)` with `"0 tryboot"`: the next boot is the trial slot's.
    Tryboot,
    /// Any other reset: a reboot, a panic's `panic=10`, the watchdog
    /// (which prints nothing).
    Reboot,
    /// The guest powered off.
    Off,
}

/// Reads how the boot whose console output is `log` ended.
pub fn ending(log: &str) -> Ending {
    if log.contains(TRYBOOT_RESTART) {
        Ending::Tryboot
    } else if log.contains("reboot: Power down") {
        Ending::Off
    } else {
        Ending::Reboot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_txt_names_the_files() {
        let c = "# x\n[all]\narm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\ncmdline=cmdline.txt\n";
        assert_eq!(config_files(c), ("vmlinuz".into(), Some("initrd.img".into()), "cmdline.txt".into()));
        assert_eq!(config_files("arm_64bit=1\n"), ("kernel8.img".into(), None, "cmdline.txt".into()));
    }

    #[test]
    fn raspi4b_boots_with_the_pl011_console() {
        let c = "console=ttyS1,115200 plinth.slot=b panic=10 printk.devkmsg=on";
        assert_eq!(raspi4b_cmdline(c), "console=ttyAMA0,115200 plinth.slot=b panic=10 printk.devkmsg=on");
    }

    #[test]
    fn endings_read_from_the_console() {
        assert_eq!(ending("…\n[ 12.3] reboot: Restarting system with command '0 tryboot'\n"), Ending::Tryboot);
        assert_eq!(ending("[ 9.1] reboot: Restarting system\n"), Ending::Reboot);
        assert_eq!(ending("Kernel panic …\nRebooting in 10 seconds..\n"), Ending::Reboot);
        assert_eq!(ending("[ 9.1] reboot: Power down\n"), Ending::Off);
        assert_eq!(ending("[ 40.2] plinth: init stopped petting the watchdog\n"), Ending::Reboot, "a watchdog reset");
    }
}
