//! Benchmark (not a test): apid + init idle RSS, and ApplyConfig round-trip
//! latency over mutual TLS on loopback. Run with `bench/trust-chain.sh`.

use std::time::{Duration, Instant};

use machinery::api;
use machinery::signing::{self, Purpose};
use osctl::connect::{self, Credentials, LocalChecks};
use plinth_tests::{Operator, osctl};

fn rss_kib(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let (node, cfg) = plinth_tests::configured_node(&op)?;
    let addr = node.addr();

    // Idle: let the node settle, then read RSS.
    std::thread::sleep(Duration::from_secs(2));
    let services = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "services"]).ok()?.json()?;
    let apid = services[0]["pid"].as_u64().unwrap_or(0);
    let init = u64::from(node.init_pid().unwrap_or(0));
    let (init_rss, apid_rss) = (rss_kib(init), rss_kib(apid));
    println!(
        "idle RSS: init {:.1} MiB, apid {:.1} MiB, together {:.1} MiB",
        init_rss as f64 / 1024.0,
        apid_rss as f64 / 1024.0,
        (init_rss + apid_rss) as f64 / 1024.0
    );

    // ApplyConfig round trips: sign, send over mTLS, verify, validate, fsync, answer.
    let text = std::fs::read_to_string(&cfg)?;
    let key = signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    let creds = Credentials::Mutual { ca: op.path("ca.crt"), crt: op.path("admin.crt"), key: op.path("admin.key") };
    let rt = tokio::runtime::Runtime::new()?;
    let samples = rt.block_on(async {
        let mut c = connect::connect(&addr, &creds, LocalChecks::On).await?;
        let mut samples = Vec::new();
        for v in 2..=201u64 {
            let body = text.replace("version = 1", &format!("version = {v}"));
            let start = Instant::now();
            let req = api::ApplyConfigRequest {
                signature: signing::sign(Purpose::Config, &key, body.as_bytes()),
                config: body.into_bytes(),
                mode: api::ApplyMode::NoReboot as i32,
                ..Default::default()
            };
            c.apply_config(req).await?;
            samples.push(start.elapsed());
        }
        anyhow::Ok(samples)
    })?;
    let mut sorted = samples.clone();
    sorted.sort();
    println!(
        "ApplyConfig round trip over mTLS ({} applies): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len(),
        percentile(&sorted, 0.5).as_secs_f64() * 1000.0,
        percentile(&sorted, 0.99).as_secs_f64() * 1000.0,
        sorted[sorted.len() - 1].as_secs_f64() * 1000.0
    );
    println!(
        "RSS after the applies: init {:.1} MiB, apid {:.1} MiB",
        rss_kib(init) as f64 / 1024.0,
        rss_kib(apid) as f64 / 1024.0
    );
    Ok(())
}
