//! Benchmark (not a test): a Plinth image booted in QEMU. Prints image and
//! root sizes, each step of the boot on the node's own clock (`osctl
//! boot-times`: kernel → PID 1 → … → apid on first boot; → Node Ready
//! after a reboot with a config, the boot told apart by its boot id), the
//! wall clock, guest RAM in use and the RSS of init and its services, idle
//! in maintenance mode and after a config. A missing figure fails the run. Run with `bench/boot.sh`
//! (`--board arm64-virt`: the arm64 image under `-M virt`, from the static
//! aarch64 binaries; `PLINTH_BENCH_BOARD` carries the board here).

use std::time::{Duration, Instant};

use plinth_qemu::{Vm, VmOptions};
use plinth_tests::footprint::{self, mib};
use plinth_tests::{Operator, boot, build_options_for, osctl};

fn memory(c: &std::path::Path, addr: &str, insecure: bool) -> anyhow::Result<String> {
    let mut args = vec!["-n", addr, "-o", "json", "version"];
    if insecure {
        args.push("--insecure");
    }
    let v = osctl(c, &args).ok()?.json()?;
    let (used, total) = footprint::guest_ram(&v)?;
    Ok(format!(
        "guest RAM in use {:.1} MiB of {:.1} MiB, init RSS {:.1} MiB",
        mib(used),
        mib(total),
        mib(footprint::init_rss(&v)?)
    ))
}

fn main() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    let board = std::env::var("PLINTH_BENCH_BOARD").unwrap_or_else(|_| "qemu-x86_64".into());
    let opts = build_options_for(&op, &image, machinery::VERSION, &board)?;
    // The configured node runs containerd and the control plane: 512 MiB.
    let memory_mib = 512;
    println!("board {board}, guest memory {memory_mib} MiB");
    let t = Instant::now();
    let manifest = image_builder::build(&opts)?;
    println!("image build (kernel cached): {:.1} s", t.elapsed().as_secs_f64());
    for (name, size) in footprint::image_sizes(&manifest)? {
        println!("{name}: {:.1} MiB", size as f64 / 1048576.0);
    }

    let t = Instant::now();
    let mut vm = Vm::start(VmOptions { image, name: "bench".into(), memory_mib, dir: work.path().join("vm") })?;
    vm.wait_for_api(Duration::from_secs(240))?;
    let wall = t.elapsed();
    let c = op.osctlconfig();
    let addr = vm.api_addr();
    println!("maintenance mode, idle: {}", memory(&c, &addr, true)?);

    let first = boot::wait_boot("the first boot's steps", Duration::from_secs(60), None, boot::MAINTENANCE, || {
        osctl(&c, &["-n", &addr, "--insecure", "-o", "json", "version"]).json().ok()
    })?;
    first.print(
        &format!(
            "first boot (creates STATE and EPHEMERAL); wall clock power-on → API {:.1} s under TCG",
            wall.as_secs_f64()
        ),
        boot::MAINTENANCE,
        machinery::boot_steps::PID1,
        machinery::boot_steps::APID,
    )?;

    let cfg = op.gen_dhcp_config("node.toml", "bench")?;
    let cfgs = cfg.to_str().unwrap_or_default();
    osctl(&c, &["-n", &addr, "--insecure", "apply-config", "-f", cfgs]).ok()?;
    // Polling the VM too: a Pi-layout guest's reboot needs the harness.
    let mut version = || {
        vm.supervise().ok()?;
        osctl(&c, &["-n", &addr, "-o", "json", "version"]).json().ok()
    };
    let configured = boot::wait_boot(
        "the Node Ready after the config",
        Duration::from_secs(300),
        None,
        boot::TO_NODE_READY,
        &mut version,
    )?;
    if configured.id != first.id {
        anyhow::bail!("the node rebooted while the config was applied (boot {} → {})", first.id, configured.id);
    }
    configured.print(
        "first boot, config applied in maintenance mode (no reboot)",
        &boot::TO_NODE_READY[boot::MAINTENANCE.len()..],
        machinery::boot_steps::CONTAINERD,
        machinery::boot_steps::NODE_READY,
    )?;

    let t = Instant::now();
    osctl(&c, &["-n", &addr, "reboot"]).ok()?;
    let reboot = boot::wait_boot(
        "the Node Ready after the reboot",
        Duration::from_secs(300),
        Some(&first.id),
        boot::TO_NODE_READY,
        &mut version,
    )?;
    let wall = t.elapsed();
    reboot.print(
        &format!("reboot with a config; wall clock reboot → Node Ready {:.1} s", wall.as_secs_f64()),
        boot::TO_NODE_READY,
        machinery::boot_steps::PID1,
        machinery::boot_steps::NODE_READY,
    )?;
    let api = reboot.at(machinery::boot_steps::APID)? - reboot.at(machinery::boot_steps::PID1)?;
    println!("  PID 1 → API (apid serving): {:.3} s guest time", api.as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    println!("configured, idle: {}", memory(&c, &addr, false)?);
    let services = osctl(&c, &["-n", &addr, "-o", "json", "services"]).ok()?.json()?;
    for (name, rss) in footprint::service_rss(&services)? {
        println!("  {name} RSS {:.1} MiB", mib(rss));
    }
    Ok(())
}
