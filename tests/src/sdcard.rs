//! A node held on a throttled disk (an SD card's, [`plinth_qemu::Throttle`]):
//! for a while, the API is asked for the Node and its Lease about once a
//! second over HTTPS (curl with the admin kubeconfig's certificates, each
//! answer timed) and init for its services' restart counts; what the hold
//! saw is a [`Hold`], whose [`Hold::problems`] are what the test refuses: a
//! Node not Ready, a Lease not renewed within its duration, a service
//! restarted, a GET that failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::cluster::ClusterNode;

/// The node's Kubernetes API as curl reaches it: the forwarded URL and the
/// admin kubeconfig's CA, certificate and key as files.
pub struct Api {
    url: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Api {
    /// From `node`'s kubeconfig; the PEM files go to `dir`.
    pub fn new(node: &ClusterNode, dir: &Path) -> anyhow::Result<Api> {
        let field = |path: &str, file: &str| -> anyhow::Result<PathBuf> {
            let jsonpath = format!("jsonpath={{{path}}}");
            let data = node.kubectl(&["config", "view", "--raw", "--minify", "-o", &jsonpath])?.ok()?.stdout;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .with_context(|| format!("{}: {path} is not base64", node.kubeconfig.display()))?;
            let out = dir.join(file);
            std::fs::write(&out, pem)?;
            Ok(out)
        };
        Ok(Api {
            url: node.vm.kube_url(),
            ca: field(".clusters[0].cluster.certificate-authority-data", "api-ca.pem")?,
            cert: field(".users[0].user.client-certificate-data", "api-cert.pem")?,
            key: field(".users[0].user.client-key-data", "api-key.pem")?,
        })
    }

    /// GETs `path`; the time curl took for the whole request (connection,
    /// TLS, answer) and the answer as JSON. Anything but a 200 is an error.
    pub fn get(&self, path: &str) -> anyhow::Result<(Duration, serde_json::Value)> {
        const MARK: &str = "\n--curl--";
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(["-w", &format!("{MARK}%{{http_code}} %{{time_total}}")])
            .arg(format!("{}{path}", self.url))
            .output()
            .context("running curl (scripts/setup-debian.sh installs it)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some((body, tail)) = stdout.rsplit_once(MARK) else {
            bail!("GET {path}: curl printed no status: {}", String::from_utf8_lossy(&out.stderr));
        };
        let (code, secs) = tail.split_once(' ').with_context(|| format!("GET {path}: curl printed {tail:?}"))?;
        if !out.status.success() || code != "200" {
            bail!("GET {path}: HTTP {code}: {body}{}", String::from_utf8_lossy(&out.stderr));
        }
        let secs: f64 = secs.trim().parse().with_context(|| format!("GET {path}: curl's time {secs:?}"))?;
        let json = serde_json::from_str(body).with_context(|| format!("GET {path}: not JSON: {body}"))?;
        Ok((Duration::from_secs_f64(secs), json))
    }
}

/// What a hold saw.
#[derive(Debug, Default)]
pub struct Hold {
    pub length: Duration,
    /// Every successful GET's time.
    pub latencies: Vec<Duration>,
    /// GETs that failed, with the error.
    pub failed: Vec<String>,
    /// Moments (seconds into the hold) the Node was not Ready, and why.
    pub not_ready: Vec<String>,
    /// How often the Lease's renewTime was seen to move.
    pub renewals: usize,
    /// The longest time (host clock) between two renewals seen, the
    /// hold's start and end counting as renewals.
    pub longest_gap: Duration,
    /// The Lease's own `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// Each service's restarts during the hold (`osctl services`' counts
    /// at the end less those at the start: apid restarts once by design
    /// when the config is applied, before the hold).
    pub restarts: BTreeMap<String, u64>,
}

impl Hold {
    /// The `p`-th percentile (0–100) of the GETs' times.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p / 100.0) * l.len() as f64).ceil() as usize;
        l[i.clamp(1, l.len()) - 1]
    }

    /// What went wrong during the hold; empty when nothing did.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        p.extend(self.failed.iter().map(|f| format!("a GET failed: {f}")));
        p.extend(self.not_ready.iter().map(|n| format!("the Node was not Ready: {n}")));
        if self.renewals == 0 {
            p.push("the Lease was never renewed".into());
        }
        if self.longest_gap >= self.lease_duration {
            p.push(format!(
                "the Lease went {:.0} s without a renewal (it lasts {} s): lost",
                self.longest_gap.as_secs_f64(),
                self.lease_duration.as_secs()
            ));
        }
        p.extend(
            self.restarts.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("service {s} restarted {n} times")),
        );
        p
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(
            f,
            "  {:.0} s held; {} API GETs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} failed",
            self.length.as_secs_f64(),
            self.latencies.len(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
            self.failed.len()
        )?;
        writeln!(
            f,
            "  Lease renewed {} times, longest gap {:.0} s (lasts {} s); Node not Ready {} times",
            self.renewals,
            self.longest_gap.as_secs_f64(),
            self.lease_duration.as_secs(),
            self.not_ready.len()
        )?;
        let restarts: Vec<String> = self.restarts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        write!(f, "  service restarts: {}", restarts.join(", "))
    }
}

/// Watches `node` for `length`: the Node's Ready condition and its Lease
/// about once a second, the services' restart counts every 30 s and at the end.
pub fn hold(node: &ClusterNode, api: &Api, length: Duration) -> anyhow::Result<Hold> {
    let name = &node.hostname;
    let node_path = format!("/api/v1/nodes/{name}");
    let lease_path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}");
    let start = Instant::now();
    let mut h = Hold::default();
    let mut last_renew: Option<String> = None;
    let mut last_change = start;
    let mut services_at = start;
    let before = restart_counts(node)?;
    loop {
        let at = start.elapsed().as_secs_f64();
        match api.get(&node_path) {
            Ok((took, n)) => {
                h.latencies.push(took);
                let conditions = n["status"]["conditions"].as_array().cloned().unwrap_or_default();
                let ready = conditions.iter().find(|c| c["type"] == "Ready");
                if ready.is_none_or(|c| c["status"] != "True") {
                    h.not_ready.push(format!(
                        "at {at:.0} s: {}",
                        ready.map_or("no Ready condition".into(), |c| c.to_string())
                    ));
                }
            }
            Err(e) => h.failed.push(format!("at {at:.0} s: {e:#}")),
        }
        match api.get(&lease_path) {
            Ok((took, l)) => {
                h.latencies.push(took);
                let secs =
                    l["spec"]["leaseDurationSeconds"].as_u64().context("the Lease has no leaseDurationSeconds")?;
                h.lease_duration = Duration::from_secs(secs);
                let renew = l["spec"]["renewTime"].as_str().map(str::to_string);
                if renew != last_renew {
                    if last_renew.is_some() {
                        h.renewals += 1;
                    }
                    h.longest_gap = h.longest_gap.max(last_change.elapsed());
                    last_change = Instant::now();
                    last_renew = renew;
                }
            }
            Err(e) => h.failed.push(format!("at {at:.0} s: {e:#}")),
        }
        let done = start.elapsed() >= length;
        if done || services_at.elapsed() >= Duration::from_secs(30) {
            for (svc, n) in restart_counts(node)? {
                let since = n.saturating_sub(before.get(&svc).copied().unwrap_or(0));
                h.restarts.insert(svc, since);
            }
            services_at = Instant::now();
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    h.longest_gap = h.longest_gap.max(last_change.elapsed());
    h.length = start.elapsed();
    Ok(h)
}

/// Each service's restart count, from `osctl services`.
fn restart_counts(node: &ClusterNode) -> anyhow::Result<BTreeMap<String, u64>> {
    let services = node.osctl(&["-o", "json", "services"]).ok()?.json()?;
    let mut counts = BTreeMap::new();
    for s in services.as_array().context("osctl services is not a list")? {
        let svc = s["name"].as_str().with_context(|| format!("a service without a name: {s}"))?;
        let n = s["restarts"].as_u64().with_context(|| format!("service {svc} reports no restarts"))?;
        counts.insert(svc.to_string(), n);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_problems() {
        let mut h = Hold {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            renewals: 5,
            longest_gap: Duration::from_secs(21),
            lease_duration: Duration::from_secs(60),
            restarts: [("apid".to_string(), 0)].into(),
            ..Hold::default()
        };
        assert_eq!(h.percentile(99.0), Duration::from_millis(99));
        assert_eq!(h.percentile(50.0), Duration::from_millis(50));
        assert_eq!(h.percentile(100.0), Duration::from_millis(100));
        assert!(h.problems().is_empty(), "{:?}", h.problems());
        h.longest_gap = Duration::from_secs(61);
        h.restarts.insert("orchestrator".into(), 2);
        h.not_ready.push("at 3 s: Unknown".into());
        let p = h.problems().join("\n");
        assert!(p.contains("61 s without a renewal (it lasts 60 s): lost"), "{p}");
        assert!(p.contains("service orchestrator restarted 2 times"), "{p}");
        assert!(p.contains("not Ready: at 3 s"), "{p}");
        assert!(!p.contains("apid"), "{p}");
        assert_eq!(Hold::default().percentile(99.0), Duration::ZERO);
        assert!(Hold::default().problems().iter().any(|p| p.contains("never renewed")));
    }
}
