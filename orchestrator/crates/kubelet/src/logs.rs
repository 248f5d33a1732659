//! Container logs as the runtime writes them (CRI format, one line per
//! entry: `<RFC 3339 nano time> <stdout|stderr> <P|F> <text>`, P marking a
//! partial line) under `<kubelet-dir>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`,
//! read back with kubectl's options: tailLines, sinceSeconds, timestamps,
//! previous, follow.

use std::path::{Path, PathBuf};

/// `kubectl logs` options, from the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub timestamps: bool,
    pub previous: bool,
}

impl Options {
    pub fn from_query(q: &[(String, String)]) -> Options {
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let yes = |k: &str| matches!(get(k), Some("true" | "1"));
        Options {
            follow: yes("follow"),
            tail_lines: get("tailLines").and_then(|v| v.parse().ok()),
            since_seconds: get("sinceSeconds").and_then(|v| v.parse().ok()),
            timestamps: yes("timestamps"),
            previous: yes("previous"),
        }
    }
}

/// One entry of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

pub fn parse_line(line: &str) -> Option<Entry<'_>> {
    let mut f = line.splitn(4, ' ');
    let time = f.next()?;
    let _stream = f.next()?;
    let tag = f.next()?;
    let text = f.next().unwrap_or_default();
    Some(Entry { time, partial: tag.starts_with('P'), text })
}

fn seconds_of(time: &str) -> i64 {
    orchestrator_apimachinery::registry::parse_time(time).unwrap_or(0)
}

/// Renders complete CRI log text as kubectl shows it (partials joined), applying since/tail/timestamps.
pub fn render(text: &str, opts: &Options, now: i64) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for e in text.lines().filter_map(parse_line) {
        if opts.since_seconds.is_some_and(|s| seconds_of(e.time) < now - s) {
            continue;
        }
        pending.push_str(e.text);
        if e.partial {
            continue;
        }
        let line = std::mem::take(&mut pending);
        lines.push(if opts.timestamps { format!("{} {line}\n", e.time) } else { format!("{line}\n") });
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    lines
}

/// The log files of a container, newest attempt first.
pub fn files(pod_log_dir: &Path, container: &str) -> Vec<PathBuf> {
    let dir = pod_log_dir.join(container);
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, p)| p).collect()
}

/// The directory of a pod's logs, by namespace and name (the newest if the name was reused).
pub fn pod_dir(logs: &Path, namespace: &str, name: &str) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{name}_");
    std::fs::read_dir(logs)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-23T09:00:00.000000001Z stdout F one\n\
2026-11-23T09:00:10.5Z stderr P tw\n\
2026-11-23T09:00:10.6Z stderr F o\n\
2026-11-23T09:00:20Z stdout F three\n";

    #[test]
    fn renders_with_options() {
        let now = orchestrator_apimachinery::registry::parse_time("2026-11-23T09:00:25Z").unwrap();
        assert_eq!(render(LOG, &Options::default(), now), ["one\n", "two\n", "three\n"]);
        assert_eq!(render(LOG, &Options { tail_lines: Some(2), ..Default::default() }, now), ["two\n", "three\n"]);
        assert_eq!(render(LOG, &Options { since_seconds: Some(10), ..Default::default() }, now), ["three\n"]);
        assert_eq!(
            render(LOG, &Options { timestamps: true, tail_lines: Some(1), ..Default::default() }, now),
            ["2026-11-23T09:00:20Z three\n"]
        );
        let q = vec![("follow".to_string(), "true".to_string()), ("tailLines".into(), "5".into())];
        assert_eq!(Options::from_query(&q), Options { follow: true, tail_lines: Some(5), ..Default::default() });
    }

    #[test]
    fn files_newest_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ns_p_u1/c")).unwrap();
        for n in [0, 2, 10] {
            std::fs::write(d.path().join(format!("ns_p_u1/c/{n}.log")), "").unwrap();
        }
        let f = files(&pod_dir(d.path(), "ns", "p").unwrap(), "c");
        assert_eq!(
            f.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            ["10.log", "2.log", "0.log"]
        );
        assert!(pod_dir(d.path(), "ns", "other").is_none());
    }
}
