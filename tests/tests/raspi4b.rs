//! The `rpi4` image's own boot files under `qemu-system-aarch64 -M
//! raspi4b` (TCG): the harness plays the Pi firmware (`autoboot.txt` →
//! BOOT-A → `config.txt` → kernel, initramfs, `bcm2711-rpi-4-b.dtb`,
//! `cmdline.txt`), Debian's arm64 kernel brings up the SD card (emmc2,
//! sdhci-iproc) and init mounts ROOT-A from it, creates STATE and
//! EPHEMERAL, and answers osctl in maintenance mode over QEMU's only
//! network on this machine: a USB Ethernet on the dwc2 controller. What
//! this leaves unproved is in image-builder/IMAGE.md ("QEMU").

use std::time::{Duration, Instant};

use anyhow::Context as _;
use machinery::layout::Slot;
use plinth_qemu::{Machine, Vm, VmOptions};
use plinth_tests::cluster::tail;
use plinth_tests::{Operator, build_options_for, osctl, slot};

#[test]
fn the_rpi4_image_boots_under_raspi4b_to_its_api() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = w.join("plinth-rpi4.img");
    image_builder::build(&build_options_for(&op, &image, machinery::VERSION, "rpi4")?)?;

    let _one = plinth_qemu::one_at_a_time();
    let started = Instant::now();
    let mut vm = Vm::start(VmOptions { image, name: "rpi4".into(), memory_mib: 2048, dir: w.join("vm") })?;
    assert_eq!(vm.machine, Machine::Raspi4b);
    vm.wait_for_api(Duration::from_secs(600)).with_context(|| tail(&vm.serial_log()))?;
    let to_api = started.elapsed();
    assert_eq!(vm.booted_slot, Some(Slot::A));

    let addr = vm.api_addr();
    let v = osctl(&op.osctlconfig(), &["-n", &addr, "--insecure", "-o", "json", "version"]).ok()?.json()?;
    assert_eq!(v[0]["mode"], "maintenance", "{v}");
    assert_eq!(v[0]["arch"], "aarch64", "{v}");
    assert_eq!(v[0]["plinth_version"], machinery::VERSION, "{v}");
    assert_eq!(slot(&v, "a")["booted"], true, "{v}");
    let log = vm.serial_log();
    assert!(log.contains("Machine model: Raspberry Pi 4 Model B"), "the Pi 4's device tree: {}", tail(&log));
    assert!(log.contains("plinth.slot=a"), "BOOT-A's cmdline.txt: {}", tail(&log));
    assert!(log.contains("slot a: root image /dev/mmcblk"), "ROOT-A from the SD card: {}", tail(&log));
    eprintln!("rpi4 under raspi4b: power-on → API {:.0} s wall", to_api.as_secs_f64());
    vm.stop(Duration::from_secs(10));
    Ok(())
}
