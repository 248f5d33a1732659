//! Benchmark (not a test): an A/B upgrade of a node in QEMU (TCG). Prints
//! the bundle size, upload throughput, the time the node took to write and
//! read back the slot, and the whole upgrade: start of the upload → the new
//! slot committed after its trial boot. Run with `bench/upgrade.sh`.

use std::time::{Duration, Instant};

use plinth_qemu::{Vm, VmOptions};
use plinth_tests::{Operator, build_bundle, build_image, osctl, wait_for};

fn main() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    build_image(&op, &image)?;
    let bundle = work.path().join("plinth-0.2.0.osb");
    let t = Instant::now();
    build_bundle(&op, &bundle, "0.2.0")?;
    let size = std::fs::metadata(&bundle)?.len();
    println!("bundle: {:.1} MiB, built in {:.1} s", size as f64 / 1048576.0, t.elapsed().as_secs_f64());

    let mut vm = Vm::start(VmOptions { image, name: "bench-up".into(), memory_mib: 256, dir: work.path().join("vm") })?;
    vm.wait_for_api(Duration::from_secs(240))?;
    let addr = vm.api_addr();
    let c = op.osctlconfig();
    let cfg = op.gen_dhcp_config("node.toml", "bench")?;
    let cfg = cfg.to_str().unwrap_or_default();
    osctl(&c, &["-n", &addr, "--insecure", "apply-config", "-f", cfg]).ok()?;
    let version = || osctl(&c, &["-n", &addr, "-o", "json", "version"]).json().ok();
    wait_for("the configured node", Duration::from_secs(120), || version().filter(|v| v[0]["mode"] == "configured"))?;

    let t = Instant::now();
    let r = osctl(&c, &["-n", &addr, "-o", "json", "upgrade", "--bundle", bundle.to_str().unwrap_or_default()])
        .ok()?
        .json()?;
    let answered = t.elapsed();
    let write = r["write_seconds"].as_f64().unwrap_or(f64::NAN);
    let upload = answered.as_secs_f64() - write;
    let slot_b = |state: Option<&str>| {
        version().filter(|v| {
            v[0]["slots"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "b" && s["booted"] == true && state.is_none_or(|st| s["state"] == st))
        })
    };
    wait_for("the node back on slot b", Duration::from_secs(300), || slot_b(None))?;
    let back = t.elapsed();
    wait_for("slot b committed", Duration::from_secs(300), || slot_b(Some("committed")))?;
    let total = t.elapsed();
    println!(
        "upload: {:.1} s ({:.1} MiB/s, staged on EPHEMERAL and hashed as it arrives)",
        upload,
        size as f64 / 1048576.0 / upload
    );
    println!("slot write and read-back: {write:.2} s");
    println!("reboot into slot b → API answering: {:.1} s", (back - answered).as_secs_f64());
    println!("upgrade end to end (upload → reboot → trial boot → committed): {:.1} s", total.as_secs_f64());
    println!("  of which the health gate holds {} s", init::upgrade::HEALTHY_FOR.as_secs());
    vm.stop(Duration::from_secs(10));
    Ok(())
}
