//! The steps from power-on to a working node, each timed on the node's own
//! clock: microseconds of `CLOCK_BOOTTIME`, which starts with the kernel.
//!
//! Whoever reaches a step (init, apid, the orchestrator) appends one line
//! `<name> <microseconds>` to the file named by [`ENV`] (in an image
//! [`crate::layout::BOOT_STEPS`], on /run: new each boot); init reads it
//! back for `Version` (`osctl boot-times`). The first line of a name wins: a
//! service restarted later does not move its step.

use std::time::Duration;

/// The environment variable init gives its services: the file to append to.
pub const ENV: &str = "PLINTH_BOOT_STEPS";

/// Every step, in the order a boot reaches them, with what it means.
pub const STEPS: &[(&str, &str)] = &[
    (PID1, "kernel → PID 1 (init starts)"),
    (MODULES, "the board's modules loaded"),
    (ROOT, "the slot's root image mounted and switched into"),
    (DATA, "STATE and EPHEMERAL mounted"),
    (NETWORK, "network up (addresses set, DHCP leases bound)"),
    (APID, "apid serving the machine API"),
    (CONTAINERD, "containerd answering on its socket"),
    (APISERVER, "Kubernetes API server serving"),
    (NODE_REGISTERED, "Node object registered by the kubelet"),
    (NODE_READY, "Node Ready reported by the kubelet"),
    (FIRST_POD_RUNNING, "first pod Running reported by the kubelet"),
];

pub const PID1: &str = "pid1";
pub const MODULES: &str = "modules";
pub const ROOT: &str = "root";
pub const DATA: &str = "data";
pub const NETWORK: &str = "network";
pub const APID: &str = "apid";
pub const CONTAINERD: &str = "containerd";
pub const APISERVER: &str = "apiserver";
pub const NODE_REGISTERED: &str = "node-registered";
pub const NODE_READY: &str = "node-ready";
pub const FIRST_POD_RUNNING: &str = "first-pod-running";

/// What a step means, for a person; `None` for a name not in [`STEPS`].
pub fn describe(name: &str) -> Option<&'static str> {
    STEPS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
}

/// The line recording that `name` was reached `since_boot` after the kernel started.
pub fn line(name: &str, since_boot: Duration) -> String {
    format!("{name} {}\n", since_boot.as_micros())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {text:?} is not `<step> <microseconds since boot>`")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
}

/// The steps of a file of [`line`]s, in the order they were reached; the
/// first line of each name wins.
pub fn parse(text: &str) -> Result<Vec<(String, Duration)>, ParseError> {
    let mut steps: Vec<(String, Duration)> = Vec::new();
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || ParseError { line: i + 1, text: l.to_string() };
        let (name, us) = l.trim().split_once(' ').ok_or_else(bad)?;
        let us: u64 = us.trim().parse().map_err(|_| bad())?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad());
        }
        if !steps.iter().any(|(n, _)| n == name) {
            steps.push((name.to_string(), Duration::from_micros(us)));
        }
    }
    steps.sort_by_key(|(_, at)| *at);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_in_time_order_and_the_first_of_a_name_wins() {
        let text = [
            line(PID1, Duration::from_micros(2_400_100)),
            line(APID, Duration::from_millis(3_100)),
            line(NETWORK, Duration::from_millis(2_900)),
            line(APID, Duration::from_millis(9_000)),
        ]
        .concat();
        let steps = parse(&text).unwrap();
        let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [PID1, NETWORK, APID]);
        assert_eq!(steps[0].1, Duration::from_micros(2_400_100));
        assert_eq!(steps[2].1, Duration::from_millis(3_100), "a restarted apid does not move its step");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("pid1 12\nnetwork soon\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("network soon"), "{e}");
        assert!(parse("pid1\n").is_err());
    }

    #[test]
    fn every_step_is_described() {
        assert_eq!(describe(NODE_READY), Some("Node Ready reported by the kubelet"));
        assert_eq!(describe("nonsense"), None);
        let mut names: Vec<&str> = STEPS.iter().map(|(n, _)| *n).collect();
        names.dedup();
        assert_eq!(names.len(), 11);
    }
}
