//! Container logs as the runtime writes them (CRI format, one line per
//! entry: `<RFC 3339 nano time> <stdout|stderr> <P|F> <text>`, P marking a
//! partial line) under `<kubelet-dir>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`,
//! read back with kubectl's options: tailLines, sinceSeconds, timestamps,
//! previous, follow, limitBytes — a line at a time, never a whole file in
//! memory. Logs are rotated as upstream's container log manager does: a
//! file over [`Rotation::max_size`] is renamed `<attempt>.log.<stamp>` and
//! the runtime reopens the log (CRI `ReopenContainerLog`); at most
//! [`Rotation::max_files`] files are kept per container.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Kubelet;
use crate::cri::v1;

/// Upstream's `containerLogMaxSize` default: 10 MiB.
pub const MAX_LOG_SIZE: u64 = 10 * 1024 * 1024;
/// Upstream's `containerLogMaxFiles` default: the current file and 4 rotated ones.
pub const MAX_LOG_FILES: usize = 5;
/// How often log sizes are checked (upstream's `containerLogMonitorInterval`).
pub const ROTATE_EVERY: Duration = Duration::from_secs(10);

/// When a container's log is rotated and how many files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    /// At least 2 (the file being written and one rotated).
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation { max_size: MAX_LOG_SIZE, max_files: MAX_LOG_FILES }
    }
}

/// `kubectl logs` options, from the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub timestamps: bool,
    pub previous: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
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
            limit_bytes: get("limitBytes").and_then(|v| v.parse().ok()),
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

/// Turns CRI log lines into what kubectl shows, one line at a time:
/// partial lines joined, `sinceSeconds` and `timestamps` applied.
pub struct Renderer {
    since: Option<i64>,
    timestamps: bool,
    pending: String,
}

impl Renderer {
    pub fn new(opts: &Options, now: i64) -> Renderer {
        Renderer { since: opts.since_seconds.map(|s| now - s), timestamps: opts.timestamps, pending: String::new() }
    }

    /// The output line `raw` (one line of a log file) completes, if any.
    pub fn line(&mut self, raw: &str) -> Option<String> {
        let e = parse_line(raw.trim_end_matches('\n'))?;
        if self.since.is_some_and(|since| seconds_of(e.time) < since) {
            return None;
        }
        self.pending.push_str(e.text);
        if e.partial {
            return None;
        }
        let line = std::mem::take(&mut self.pending);
        Some(if self.timestamps { format!("{} {line}\n", e.time) } else { format!("{line}\n") })
    }
}

/// The last `n` of some lines (all when `n` is `None`), holding only those.
pub struct Tail {
    keep: Option<usize>,
    lines: VecDeque<String>,
}

impl Tail {
    pub fn new(keep: Option<usize>) -> Tail {
        Tail { keep, lines: VecDeque::new() }
    }

    /// Adds a line; returns it at once when all lines are wanted.
    pub fn push(&mut self, line: String) -> Option<String> {
        let Some(n) = self.keep else { return Some(line) };
        if n > 0 {
            if self.lines.len() == n {
                self.lines.pop_front();
            }
            self.lines.push_back(line);
        }
        None
    }

    pub fn into_lines(self) -> impl Iterator<Item = String> {
        self.lines.into_iter()
    }
}

/// Renders complete CRI log text as kubectl shows it (partials joined), applying since/tail/timestamps.
pub fn render(text: &str, opts: &Options, now: i64) -> Vec<String> {
    let mut r = Renderer::new(opts, now);
    let mut tail = Tail::new(opts.tail_lines);
    let mut out: Vec<String> = text.lines().filter_map(|l| r.line(l)).filter_map(|l| tail.push(l)).collect();
    out.extend(tail.into_lines());
    out
}

/// The files of one attempt's log, oldest first: the rotated
/// `<attempt>.log.<stamp>` in stamp order, then `current` itself.
pub fn segments(current: &Path) -> Vec<PathBuf> {
    let mut out = rotated(current);
    out.push(current.to_path_buf());
    out
}

/// The rotated files of `current`, oldest first.
fn rotated(current: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (current.parent(), current.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Rotates `current` if it is over the size limit: removes the oldest
/// rotated files so that `max_files` remain after this rotation and
/// renames the file with a time stamp. Returns the new name; the runtime
/// must then reopen its log (if it cannot, rename the file back).
pub fn rotate(current: &Path, rule: Rotation) -> Result<Option<PathBuf>, String> {
    let size = match std::fs::metadata(current) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("stat {}: {e}", current.display())),
    };
    if size <= rule.max_size {
        return Ok(None);
    }
    let old = rotated(current);
    let excess = (old.len() + 2).saturating_sub(rule.max_files.max(2));
    for f in &old[..excess] {
        std::fs::remove_file(f).map_err(|e| format!("remove {}: {e}", f.display()))?;
    }
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let to = PathBuf::from(format!("{}.{stamp:020}", current.display()));
    std::fs::rename(current, &to).map_err(|e| format!("rename {} to {}: {e}", current.display(), to.display()))?;
    Ok(Some(to))
}

/// Rotates the logs of this node's running containers, for ever.
pub async fn rotate_forever(k: std::sync::Arc<Kubelet>) {
    let mut tick = tokio::time::interval(ROTATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let running = v1::ContainerFilter {
            state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
            ..Default::default()
        };
        let mut rs = k.cri.runtime.clone();
        let Ok(list) = rs.list_containers(v1::ListContainersRequest { filter: Some(running) }).await else { continue };
        for c in list.into_inner().containers {
            let request = v1::ContainerStatusRequest { container_id: c.id.clone(), verbose: false };
            let status = rs.container_status(request).await.ok().and_then(|s| s.into_inner().status);
            let Some(path) = status.map(|s| PathBuf::from(s.log_path)).filter(|p| p.is_absolute()) else { continue };
            let to = match rotate(&path, k.cfg.log_rotation) {
                Ok(Some(to)) => to,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("container log rotation: {e}");
                    continue;
                }
            };
            let reopen = rs.reopen_container_log(v1::ReopenContainerLogRequest { container_id: c.id.clone() }).await;
            if let Err(s) = reopen {
                let _ = std::fs::rename(&to, &path);
                tracing::warn!("container log rotation: reopen {}: {}", path.display(), s.message());
            }
        }
    }
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
    fn a_log_over_the_limit_is_rotated_and_at_most_max_files_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let current = d.path().join("0.log");
        let rule = Rotation { max_size: 100, max_files: 3 };
        for round in 0..6 {
            std::fs::write(&current, format!("2026-11-23T09:00:00Z stdout F round {round}\n").repeat(5)).unwrap();
            assert!(rotate(&current, rule).unwrap().is_some());
            assert!(!current.exists());
        }
        std::fs::write(&current, "2026-11-23T09:00:00Z stdout F now\n").unwrap();
        let kept = segments(&current);
        assert_eq!(kept.len(), 3, "two rotated files and the current one: {kept:?}");
        assert!(std::fs::read_to_string(&kept[1]).unwrap().contains("round 5"), "the newest rotated file is kept");
        assert!(std::fs::read_to_string(&kept[0]).unwrap().contains("round 4"));
        assert_eq!(rotate(&current, rule).unwrap(), None, "under the limit");
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        let mut t = Tail::new(Some(2));
        for l in ["a", "b", "c"] {
            assert_eq!(t.push(l.into()), None);
        }
        assert_eq!(t.into_lines().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(Tail::new(None).push("x".into()), Some("x".into()));
        assert_eq!(Tail::new(Some(0)).into_lines().count(), 0);
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
