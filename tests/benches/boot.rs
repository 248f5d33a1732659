//! Benchmark (not a test): a Plinth image booted in QEMU. Prints image and
//! root sizes, time to the API (guest uptime from the kernel log, and
//! wall clock), guest RAM in use and the RSS of init and apid, idle in
//! maintenance mode and after a config. Run with `bench/boot.sh`
//! (`--board arm64-virt`: the arm64 image under `-M virt`, from the static
//! aarch64 binaries; `PLINTH_BENCH_BOARD` carries the board here).

use std::time::{Duration, Instant};

use plinth_qemu::{Vm, VmOptions};
use plinth_tests::{Operator, build_options, osctl, wait_for};

/// Guest uptime (s) of the newest kernel-log record containing `needle`,
/// read through the API (the console may print records late).
fn guest_time(c: &std::path::Path, addr: &str, needle: &str) -> f64 {
    let out = osctl(c, &["-n", addr, "-o", "json", "dmesg"]).stdout;
    out.lines()
        .rfind(|l| l.contains(needle))
        .and_then(|rec| serde_json::from_str::<serde_json::Value>(rec).ok()?["timestamp_us"].as_u64())
        .map_or(f64::NAN, |us| us as f64 / 1e6)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn memory(c: &std::path::Path, addr: &str, insecure: bool) -> anyhow::Result<String> {
    let mut args = vec!["-n", addr, "-o", "json", "version"];
    if insecure {
        args.push("--insecure");
    }
    let v = osctl(c, &args).ok()?.json()?;
    let used = v[0]["memory_total_kib"].as_u64().unwrap_or(0) - v[0]["memory_available_kib"].as_u64().unwrap_or(0);
    Ok(format!(
        "guest RAM in use {:.1} MiB of {:.1} MiB, init RSS {:.1} MiB",
        mib(used),
        mib(v[0]["memory_total_kib"].as_u64().unwrap_or(0)),
        mib(v[0]["init_rss_kib"].as_u64().unwrap_or(0))
    ))
}

fn main() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    let board = std::env::var("PLINTH_BENCH_BOARD").unwrap_or_else(|_| "qemu-x86_64".into());
    let mut opts = build_options(&op, &image, machinery::VERSION)?;
    let memory_mib = if board == "qemu-x86_64" {
        256
    } else {
        opts.board = board.clone();
        opts.bin_dir = std::env::var_os("PLINTH_BIN_DIR_AARCH64")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| image_builder::default_bin_dir(machinery::board::Arch::Aarch64));
        512
    };
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

    let cfg = op.gen_dhcp_config("node.toml", "bench")?;
    let cfgs = cfg.to_str().unwrap_or_default();
    osctl(&c, &["-n", &addr, "--insecure", "apply-config", "-f", cfgs]).ok()?;
    wait_for("mutual TLS", Duration::from_secs(60), || osctl(&c, &["-n", &addr, "version"]).ok().ok())?;
    let (init, api) = (guest_time(&c, &addr, "Plinth 0.1.0 starting"), guest_time(&c, &addr, "apid: started (pid"));
    println!(
        "first boot (creates STATE and EPHEMERAL): PID 1 at {init:.2} s guest uptime, apid at {api:.2} s \
         (PID 1 → API {:.2} s); wall clock power-on → API {:.1} s under TCG",
        api - init,
        wall.as_secs_f64()
    );

    let t = Instant::now();
    osctl(&c, &["-n", &addr, "reboot"]).ok()?;
    let uptime = || -> Option<u64> {
        osctl(&c, &["-n", &addr, "-o", "json", "version"]).json().ok()?[0]["uptime_seconds"].as_u64()
    };
    wait_for("the API after the reboot", Duration::from_secs(240), || uptime().filter(|u| *u < 30))?;
    let (init, api) = (guest_time(&c, &addr, "Plinth 0.1.0 starting"), guest_time(&c, &addr, "apid: started (pid"));
    println!(
        "reboot with a config: PID 1 at {init:.2} s guest uptime, apid at {api:.2} s (PID 1 → API {:.2} s); \
         wall clock reboot → API {:.1} s",
        api - init,
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    println!("configured, idle: {}", memory(&c, &addr, false)?);
    let services = osctl(&c, &["-n", &addr, "-o", "json", "services"]).ok()?.json()?;
    for s in services.as_array().into_iter().flatten() {
        println!("  {} RSS {:.1} MiB", s["name"].as_str().unwrap_or("?"), mib(s["rss_kib"].as_u64().unwrap_or(0)));
    }
    Ok(())
}
