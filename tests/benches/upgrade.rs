//! Benchmark (not a test): an A/B upgrade of a node in QEMU (TCG). Prints
//! the bundle size, upload throughput, the time the node took to write and
//! read back the slot, and the whole upgrade: start of the upload → the new
//! slot committed after its trial boot. Then, staged into the other slot,
//! two bundles that move less: a same-version rebuild and a one-binary
//! change, each with the bytes sent, the time and the slot write. Run with
//! `bench/upgrade.sh` (which sets `SOURCE_DATE_EPOCH`, as a release build
//! would). Every figure comes from a measurement or the bench fails.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_qemu::{Vm, VmOptions};
use plinth_tests::cluster::tail;
use plinth_tests::{Operator, build_bundle, build_image, build_options, bundle_with, osctl, wait_for};

/// A staged upgrade: its osctl JSON answer, and the wall time.
fn staged(c: &Path, addr: &str, bundle: &Path) -> anyhow::Result<(serde_json::Value, f64)> {
    let t = Instant::now();
    let bundle = bundle.to_str().context("utf-8 path")?;
    let r = osctl(c, &["-n", addr, "-o", "json", "upgrade", "--bundle", bundle, "--stage"]).ok()?.json()?;
    Ok((r, t.elapsed().as_secs_f64()))
}

/// Prints one staged case's figures from osctl's answer.
fn report(case: &str, r: &serde_json::Value, seconds: f64) -> anyhow::Result<()> {
    let sent = r["sent_bytes"].as_u64().with_context(|| format!("{case}: no sent_bytes in {r}"))?;
    let size = r["bytes"].as_u64().with_context(|| format!("{case}: no bytes in {r}"))?;
    let write = r["write_seconds"].as_f64().with_context(|| format!("{case}: no write_seconds in {r}"))?;
    println!(
        "{case}: sent {:.2} MiB of a {:.1} MiB bundle (not sent: {}), upgrade answered in {seconds:.1} s, \
         slot write and read-back {write:.2} s",
        sent as f64 / 1048576.0,
        size as f64 / 1048576.0,
        r["local_parts"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map_or("nothing".into(), |a| { a.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(", ") }),
    );
    Ok(())
}

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
    let write = r["write_seconds"].as_f64().with_context(|| format!("no write_seconds in {r}"))?;
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

    // Slot b runs 0.2.0. A rebuild of it, and one with a single binary
    // changed (apid, 64 KiB appended: its bytes and size differ), each
    // staged into slot a: only what slot b does not hold is sent.
    let rebuild = work.path().join("plinth-0.2.0-rebuild.osb");
    build_bundle(&op, &rebuild, "0.2.0")?;
    let (r, s) = staged(&c, &addr, &rebuild).with_context(|| tail(&vm.serial_log()))?;
    report("same-version rebuild", &r, s)?;
    let mut opts = build_options(&op, &work.path().join("plinth-0.2.1.osb"), "0.2.1")?;
    let bins = work.path().join("bins");
    std::fs::create_dir_all(&bins)?;
    for (name, _) in machinery::layout::IMAGE_BINARIES.iter().chain(&[(machinery::layout::PAUSE_BINARY, "")]) {
        std::fs::copy(opts.bin_dir.join(name), bins.join(name)).with_context(|| format!("copying {name}"))?;
    }
    let apid = bins.join("apid");
    let mut changed = std::fs::read(&apid)?;
    changed.extend((0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    std::fs::write(&apid, changed)?;
    opts.bin_dir = bins;
    bundle_with(&opts, &op)?;
    let (r, s) = staged(&c, &addr, &opts.out).with_context(|| tail(&vm.serial_log()))?;
    report("one binary changed (apid)", &r, s)?;
    vm.stop(Duration::from_secs(10));
    Ok(())
}
