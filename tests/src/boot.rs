//! A node's boot, read from its own clocks (`osctl version -o json`: the
//! boot id and the steps init records): shared by the boot and journey
//! benchmarks. A figure that is missing is an error, never a NaN.

use std::time::Duration;

use anyhow::{Context as _, bail};
use machinery::boot_steps;

use crate::wait_for;

/// The steps a node with a control-plane config reaches, up to the Node Ready.
pub const TO_NODE_READY: &[&str] = &[
    boot_steps::PID1,
    boot_steps::MODULES,
    boot_steps::ROOT,
    boot_steps::DATA,
    boot_steps::NETWORK,
    boot_steps::APID,
    boot_steps::CONTAINERD,
    boot_steps::APISERVER,
    boot_steps::NODE_REGISTERED,
    boot_steps::NODE_READY,
];

/// The first of those, which a node reaches without a config (maintenance mode).
pub const MAINTENANCE: &[&str] = TO_NODE_READY.split_at(6).0;

/// One boot as the node reports it.
#[derive(Debug, Clone)]
pub struct Boot {
    pub id: String,
    /// Each step reached so far, with its time since the kernel started.
    pub steps: Vec<(String, Duration)>,
}

impl Boot {
    /// From one node's entry of `osctl version -o json`.
    pub fn from_version(v: &serde_json::Value) -> anyhow::Result<Boot> {
        let v = v.get(0).unwrap_or(v);
        let id = v["boot_id"].as_str().filter(|s| !s.is_empty()).context("the node reports no boot_id")?;
        let steps = v["boot_steps"]
            .as_array()
            .context("the node reports no boot_steps")?
            .iter()
            .map(|s| {
                let name = s["name"].as_str().with_context(|| format!("a boot step without a name: {s}"))?;
                let us = s["since_boot_us"].as_u64().with_context(|| format!("boot step {name} has no time: {s}"))?;
                Ok((name.to_string(), Duration::from_micros(us)))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Boot { id: id.to_string(), steps })
    }

    /// When `step` was reached; an error when it was not.
    pub fn at(&self, step: &str) -> anyhow::Result<Duration> {
        self.steps.iter().find(|(n, _)| n == step).map(|(_, t)| *t).with_context(|| {
            let seen: Vec<&str> = self.steps.iter().map(|(n, _)| n.as_str()).collect();
            format!("boot {} has no step {step:?} (it reached: {})", self.id, seen.join(", "))
        })
    }

    fn has_all(&self, want: &[&str]) -> bool {
        want.iter().all(|w| self.steps.iter().any(|(n, _)| n == w))
    }

    /// Prints each step of `want` in the order reached (guest time since
    /// boot and since the previous step), then `from` → `to`; fails on any
    /// missing step.
    pub fn print(&self, title: &str, want: &[&str], from: &str, to: &str) -> anyhow::Result<Duration> {
        for step in want {
            self.at(step)?;
        }
        println!("{title} (boot {}):", self.id);
        let mut previous = Duration::ZERO;
        for (step, at) in self.steps.iter().filter(|(n, _)| want.contains(&n.as_str())) {
            println!(
                "  {:<18} {:>7.3} s guest uptime  (+{:.3} s)  {}",
                step,
                at.as_secs_f64(),
                at.saturating_sub(previous).as_secs_f64(),
                boot_steps::describe(step).unwrap_or_default()
            );
            previous = *at;
        }
        let (a, b) = (self.at(from)?, self.at(to)?);
        if b < a {
            bail!("boot {}: step {to} ({b:?}) came before {from} ({a:?})", self.id);
        }
        let span = b - a;
        println!("  {from} → {to}: {:.3} s guest time", span.as_secs_f64());
        Ok(span)
    }
}

/// Waits (up to `timeout`) for a boot other than `previous` (by boot id:
/// never a figure of the boot before a reboot) that has reached every step
/// of `want`. `version` runs `osctl version -o json` on the node.
pub fn wait_boot(
    what: &str,
    timeout: Duration,
    previous: Option<&str>,
    want: &[&str],
    mut version: impl FnMut() -> Option<serde_json::Value>,
) -> anyhow::Result<Boot> {
    let mut last = None;
    let found = wait_for(what, timeout, || {
        let boot = Boot::from_version(&version()?).ok()?;
        let new = previous.is_none_or(|p| p != boot.id);
        let done = new && boot.has_all(want);
        last = Some(boot.clone());
        done.then_some(boot)
    });
    found.with_context(|| match last {
        Some(b) => format!(
            "last answer: boot {}{} with steps {:?}",
            b.id,
            if previous == Some(b.id.as_str()) { " (the previous boot)" } else { "" },
            b.steps
        ),
        None => "the node never answered with its boot".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, steps: &[(&str, u64)]) -> serde_json::Value {
        let steps: Vec<_> = steps.iter().map(|(n, us)| serde_json::json!({"name": n, "since_boot_us": us})).collect();
        serde_json::json!([{"boot_id": id, "boot_steps": steps}])
    }

    #[test]
    fn a_missing_step_is_an_error_naming_it() {
        let b = Boot::from_version(&version("b1", &[("pid1", 2_000_000), ("apid", 2_500_000)])).unwrap();
        assert_eq!(b.at("apid").unwrap(), Duration::from_millis(2_500));
        let e = b.print("t", MAINTENANCE, "pid1", "apid").unwrap_err().to_string();
        assert!(e.contains("\"modules\"") && e.contains("b1"), "{e}");
        assert!(Boot::from_version(&serde_json::json!([{"boot_id": ""}])).is_err());
    }

    #[test]
    fn the_previous_boot_is_never_taken() {
        let mut answers = vec![
            version("new", &[("pid1", 1)]),
            version("old", &[("pid1", 1), ("apid", 2)]),
            version("old", &[("pid1", 1), ("apid", 2)]),
        ];
        // The old boot has every step but is skipped; so is the new one until it has them.
        let e = wait_boot("t", Duration::ZERO, Some("old"), &["pid1", "apid"], || answers.pop()).unwrap_err();
        assert!(format!("{e:#}").contains("previous boot"), "{e:#}");
        answers = vec![version("new", &[("pid1", 1), ("apid", 2)]), version("old", &[("pid1", 1), ("apid", 2)])];
        let b = wait_boot("t", Duration::from_secs(5), Some("old"), &["pid1", "apid"], || answers.pop()).unwrap();
        assert_eq!(b.id, "new");
    }
}
