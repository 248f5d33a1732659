//! Where a pod's sync spends its time: each step (the lookups, the
//! sandbox with its CNI ADD, the image check, CreateContainer,
//! StartContainer, the status write…) is marked with [`mark`] inside a
//! sync run under [`scope`], and a sync that started something logs the
//! steps at debug level under the target `orchestrator_kubelet::timing`
//! (`pod-steps <pod> total=<ms> waited=<ms> <step>=<ms> …`):
//! `PLINTH_LOG=orchestrator_kubelet::timing=debug`
//! (`cargo bench -p orchestrator --bench kubelet` prints them as a table).
//! Outside a scope (probes, the server) a mark does nothing.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

/// The steps of one sync, in order, each with the time since the previous mark.
pub(crate) struct Steps {
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
    /// Whether the sync created a sandbox or started a container (only those are logged).
    worked: bool,
}

tokio::task_local! {
    static STEPS: RefCell<Steps>;
}

/// Ends step `name` now (its time: since the previous mark or the scope's start).
pub(crate) fn mark(name: &'static str) {
    let _ = STEPS.try_with(|s| {
        let mut s = s.borrow_mut();
        let now = Instant::now();
        let d = now - s.last;
        s.last = now;
        s.steps.push((name, d));
    });
}

/// Marks the sync as one that did work (created a sandbox, started a container): its steps are logged.
pub(crate) fn worked() {
    let _ = STEPS.try_with(|s| s.borrow_mut().worked = true);
}

/// Runs a sync with its steps recorded; logs them when it did work.
/// `waited`: how long the sync waited for its turn before it started.
pub(crate) async fn scope<T>(pod: &str, waited: Duration, f: impl Future<Output = T>) -> T {
    let now = Instant::now();
    let steps = RefCell::new(Steps { start: now, last: now, steps: Vec::new(), worked: false });
    let (out, steps) = STEPS
        .scope(steps, async {
            let out = f.await;
            (out, STEPS.with(|s| std::mem::replace(&mut *s.borrow_mut(), Steps::empty())))
        })
        .await;
    if steps.worked {
        tracing::debug!(target: "orchestrator_kubelet::timing", "{}", steps.line(pod, waited));
    }
    out
}

impl Steps {
    fn empty() -> Steps {
        let now = Instant::now();
        Steps { start: now, last: now, steps: Vec::new(), worked: false }
    }

    /// `pod-steps <pod> total=<ms> waited=<ms> <step>=<ms> …` (milliseconds, one decimal; a step may repeat).
    fn line(&self, pod: &str, waited: Duration) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut out = format!("{MARKER}{pod} total={:.1} waited={:.1}", ms(self.last - self.start), ms(waited));
        for (name, d) in &self.steps {
            let _ = write!(out, " {name}={:.1}", ms(*d));
        }
        out
    }
}

const MARKER: &str = "pod-steps ";

/// A log line's pod and steps as (name, milliseconds), for the benchmark's table.
pub fn parse_line(line: &str) -> Option<(String, Vec<(String, f64)>)> {
    let (_, rest) = line.split_once(MARKER)?;
    let mut words = rest.split_whitespace();
    let pod = words.next()?.to_string();
    let steps = words
        .map_while(|w| w.split_once('=').and_then(|(name, v)| Some((name.to_string(), v.parse().ok()?))))
        .collect();
    Some((pod, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_are_marked_in_order_and_read_back() {
        let line = STEPS
            .scope(RefCell::new(Steps::empty()), async {
                mark("lookups");
                tokio::time::sleep(Duration::from_millis(5)).await;
                mark("RunPodSandbox");
                worked();
                STEPS.with(|s| {
                    let s = s.borrow();
                    assert!(s.worked);
                    s.line("web-1", Duration::from_millis(2))
                })
            })
            .await;
        let logged = format!("2026-12-03T19:00:00Z DEBUG sync pod{{pod=web-1}}: orchestrator_kubelet::timing: {line}");
        let (pod, parsed) = parse_line(&logged).expect("a steps line");
        assert_eq!(pod, "web-1");
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["total", "waited", "lookups", "RunPodSandbox"], "{line}");
        assert!(parsed[3].1 >= 5.0, "the sleep is in RunPodSandbox: {line}");
        assert_eq!(parsed[1].1, 2.0);
        assert_eq!(parse_line("sync pod{pod=web-1}: nothing"), None);
        // Outside a scope a mark does nothing (and does not panic).
        mark("nowhere");
    }
}
