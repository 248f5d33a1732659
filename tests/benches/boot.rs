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
use plinth_tests::boot;
use plinth_tests::{Operator, build_options, osctl};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn memory(c: &std::path::Path, addr: &str, insecure: bool) -> anyhow::Result<String> {
    let mut args = vec!["-n", addr, "-o", "json", "version"];
    if insecure {
        args.push("--insecure");
    }
    let v = osctl(c, &args).ok()?.json()?;
    let kib = |field: &str| v[0][field].as_u64().ok_or_else(|| anyhow::anyhow!("osctl version has no {field}: {v}"));
    let (total, available) = (kib("memory_total_kib")?, kib("memory_available_kib")?);
    Ok(format!(
        "guest RAM in use {:.1} MiB of {:.1} MiB, init RSS {:.1} MiB",
        mib(total.saturating_sub(available)),
        mib(total),
        mib(kib("init_rss_kib")?)
    ))
}

fn main() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    let board = std::env::var("PLINTH_BENCH_BOARD").unwrap_or_else(|_| "qemu-x86_64".into());
    let mut opts = build_options(&op, &image, machinery::VERSION)?;
    // The configured node runs containerd and the control plane: 512 MiB.
    let memory_mib = 512;
    if board != "qemu-x86_64" {
        opts.board = board.clone();
        opts.bin_dir = std::env::var_os("PLINTH_BIN_DIR_AARCH64")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| image_builder::default_bin_dir(machinery::board::Arch::Aarch64));
    }
    println!("board {board}, guest memory {memory_mib} MiB");
    let t = Instant::now();
    image_builder::build(&opts)?;
    println!("image build (kernel cached): {:.1} s", t.elapsed().as_secs_f64());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("plinth.img.manifest.json"))?)?;
    for part in manifest["parts"].as_array().into_iter().flatten() {
        let name = part["name"].as_str().unwrap_or_default();
        if ["root.squashfs", "initramfs", "uki", "vmlinuz", "boot-a.img", "image"].contains(&name) {
            println!("{name}: {:.1} MiB", part["size"].as_u64().unwrap_or(0) as f64 / 1048576.0);
        }
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
    let version = || osctl(&c, &["-n", &addr, "-o", "json", "version"]).json().ok();
    let configured = boot::wait_boot(
        "the Node Ready after the config",
        Duration::from_secs(300),
        None,
        boot::TO_NODE_READY,
        version,
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
        version,
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
    for s in services.as_array().into_iter().flatten() {
        println!("  {} RSS {:.1} MiB", s["name"].as_str().unwrap_or("?"), mib(s["rss_kib"].as_u64().unwrap_or(0)));
    }
    Ok(())
}
