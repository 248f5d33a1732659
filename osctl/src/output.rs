//! Human tables by default, JSON for scripts (`-o json`).

use clap::ValueEnum;
use comfy_table::{Table as Comfy, presets::NOTHING};
use machinery::api::{self, NodeMode, ServiceState};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// A borderless table with a header row, like kubectl's.
pub struct Table(Comfy);

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let mut t = Comfy::new();
        t.load_preset(NOTHING).set_header(header.to_vec());
        Table(t)
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.0.add_row(cells);
    }

    pub fn print(&self) {
        for line in self.0.to_string().lines() {
            println!("{}", line.trim_end());
        }
    }
}

pub fn json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86400, (secs % 86400) / 3600),
    }
}

fn mode_name(m: i32) -> &'static str {
    match NodeMode::try_from(m) {
        Ok(NodeMode::Maintenance) => "maintenance",
        Ok(NodeMode::Configured) => "configured",
        Ok(NodeMode::Safe) => "safe",
        _ => "unknown",
    }
}

fn state_name(s: i32) -> &'static str {
    match ServiceState::try_from(s) {
        Ok(ServiceState::Starting) => "starting",
        Ok(ServiceState::Running) => "running",
        Ok(ServiceState::Backoff) => "backoff",
        Ok(ServiceState::Stopping) => "stopping",
        Ok(ServiceState::Stopped) => "stopped",
        _ => "unknown",
    }
}

pub fn version(fmt: Format, results: &[(String, api::VersionResponse)]) {
    match fmt {
        Format::Json => json(&serde_json::Value::Array(
            results
                .iter()
                .map(|(node, v)| {
                    serde_json::json!({
                        "node": node, "plinth_version": v.plinth_version, "arch": v.arch,
                        "mode": mode_name(v.mode), "config_version": v.config_version,
                        "hostname": v.hostname, "uptime_seconds": v.uptime_seconds,
                        "staged_config_version": v.staged_config_version,
                        "try_seconds_left": v.try_seconds_left,
                        "memory_total_kib": v.memory_total_kib,
                        "memory_available_kib": v.memory_available_kib,
                        "init_rss_kib": v.init_rss_kib,
                        "init_write_bytes": v.init_write_bytes,
                        "disks": v.disks.iter().map(|d| serde_json::json!({
                            "device": d.device, "written_bytes": d.written_bytes,
                        })).collect::<Vec<_>>(),
                        "safe_reason": v.safe_reason,
                        "store_problem": v.store_problem,
                        "boot_id": v.boot_id,
                        "boot_steps": boot_steps_json(&v.boot_steps),
                        "slots": v.slots.iter().map(|s| serde_json::json!({
                            "name": s.name, "version": s.version, "state": s.state,
                            "booted": s.booted, "next_boot": s.next_boot,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )),
        Format::Table => {
            let mut t = Table::new(&["NODE", "PLINTH", "ARCH", "MODE", "CONFIG", "HOSTNAME", "UPTIME"]);
            for (node, v) in results {
                let mut config = if v.config_version == 0 { "-".to_string() } else { v.config_version.to_string() };
                if v.staged_config_version > 0 {
                    config.push_str(&format!(" (staged {})", v.staged_config_version));
                }
                if v.try_seconds_left > 0 {
                    config.push_str(&format!(" (trial, {}s left)", v.try_seconds_left));
                }
                t.row(vec![
                    node.clone(),
                    v.plinth_version.clone(),
                    v.arch.clone(),
                    mode_name(v.mode).into(),
                    config,
                    if v.hostname.is_empty() { "-".into() } else { v.hostname.clone() },
                    duration(v.uptime_seconds),
                ]);
            }
            t.print();
            for (node, v) in results.iter().filter(|(_, v)| !v.safe_reason.is_empty()) {
                eprintln!("{node} is in safe mode: {}", v.safe_reason);
            }
            for (node, v) in results.iter().filter(|(_, v)| !v.store_problem.is_empty()) {
                eprintln!("{node}: {}", v.store_problem);
            }
            slots(results);
        }
    }
}

fn boot_steps_json(steps: &[api::BootStep]) -> serde_json::Value {
    steps.iter().map(|s| serde_json::json!({"name": s.name, "since_boot_us": s.since_boot_us})).collect()
}

/// This boot's steps on each node, timed on the node's own clock.
pub fn boot_times(fmt: Format, results: &[(String, api::VersionResponse)]) {
    match fmt {
        Format::Json => json(&serde_json::Value::Array(
            results
                .iter()
                .map(|(node, v)| {
                    serde_json::json!({"node": node, "boot_id": v.boot_id, "steps": boot_steps_json(&v.boot_steps)})
                })
                .collect(),
        )),
        Format::Table => {
            let mut t = Table::new(&["NODE", "STEP", "SINCE BOOT", "AFTER PREVIOUS", "WHAT"]);
            for (node, v) in results {
                let mut previous = 0;
                for s in &v.boot_steps {
                    let secs = |us: u64| format!("{:.3}s", us as f64 / 1e6);
                    t.row(vec![
                        node.clone(),
                        s.name.clone(),
                        secs(s.since_boot_us),
                        format!("+{}", secs(s.since_boot_us.saturating_sub(previous))),
                        machinery::boot_steps::describe(&s.name).unwrap_or("-").into(),
                    ]);
                    previous = s.since_boot_us;
                }
            }
            t.print();
            for (node, v) in results {
                eprintln!("{node}: boot {}", v.boot_id);
            }
        }
    }
}

/// The A/B slots of each node that has them.
fn slots(results: &[(String, api::VersionResponse)]) {
    if results.iter().all(|(_, v)| v.slots.is_empty()) {
        return;
    }
    println!();
    let mut t = Table::new(&["NODE", "SLOT", "VERSION", "STATE", "BOOTED", "NEXT BOOT"]);
    for (node, v) in results {
        for s in &v.slots {
            let mark = |b: bool| if b { "*".to_string() } else { String::new() };
            t.row(vec![
                node.clone(),
                s.name.clone(),
                if s.version.is_empty() { "-".into() } else { s.version.clone() },
                s.state.clone(),
                mark(s.booted),
                mark(s.next_boot),
            ]);
        }
    }
    t.print();
}

pub fn services(fmt: Format, results: &[(String, Vec<api::ServiceInfo>)]) {
    match fmt {
        Format::Json => json(&serde_json::Value::Array(
            results
                .iter()
                .flat_map(|(node, list)| {
                    list.iter().map(move |s| {
                        serde_json::json!({
                            "node": node, "name": s.name, "state": state_name(s.state), "pid": s.pid,
                            "restarts": s.restarts, "uptime_seconds": s.uptime_seconds, "last_exit": s.last_exit,
                            "rss_kib": s.rss_kib, "write_bytes": s.write_bytes,
                        })
                    })
                })
                .collect(),
        )),
        Format::Table => {
            let mut t = Table::new(&["NODE", "SERVICE", "STATE", "PID", "RESTARTS", "UPTIME", "RSS", "LAST EXIT"]);
            for (node, list) in results {
                for s in list {
                    t.row(vec![
                        node.clone(),
                        s.name.clone(),
                        state_name(s.state).into(),
                        if s.pid == 0 { "-".into() } else { s.pid.to_string() },
                        s.restarts.to_string(),
                        if s.uptime_seconds == 0 && s.pid == 0 { "-".into() } else { duration(s.uptime_seconds) },
                        if s.rss_kib == 0 { "-".into() } else { format!("{:.1}Mi", s.rss_kib as f64 / 1024.0) },
                        if s.last_exit.is_empty() { "-".into() } else { s.last_exit.clone() },
                    ]);
                }
            }
            t.print();
        }
    }
}

fn timestamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

pub fn log_line(fmt: Format, node: Option<&str>, l: &api::LogLine) {
    match fmt {
        Format::Json => println!(
            "{}",
            serde_json::json!({"node": node, "time": timestamp(l.timestamp_ms), "stream": l.stream, "line": l.line})
        ),
        Format::Table => match node {
            Some(n) => println!("{n}: {}", l.line),
            None => println!("{}", l.line),
        },
    }
}

pub fn dmesg(fmt: Format, r: &api::DmesgRecord) {
    match fmt {
        Format::Json => println!(
            "{}",
            serde_json::json!({"priority": r.priority, "sequence": r.sequence, "timestamp_us": r.timestamp_us, "message": r.message})
        ),
        Format::Table => {
            println!("[{:>5}.{:06}] {}", r.timestamp_us / 1_000_000, r.timestamp_us % 1_000_000, r.message)
        }
    }
}

pub fn event(fmt: Format, node: &str, e: &api::Event) {
    match fmt {
        Format::Json => println!(
            "{}",
            serde_json::json!({"node": node, "time": timestamp(e.timestamp_ms), "kind": e.kind, "message": e.message})
        ),
        Format::Table => println!("{}  {node}  {:<8} {}", timestamp(e.timestamp_ms), e.kind, e.message),
    }
}

/// A byte progress bar on stderr when it is a terminal (hidden otherwise,
/// so scripts and CI logs stay clean).
/// `image flash --list`: the disks, and why some cannot be flashed.
pub fn disks(fmt: Format, disks: &[crate::flash::DiskInfo]) {
    let note = |d: &crate::flash::DiskInfo| {
        if d.system {
            format!("system disk: {}", d.in_use.join("; "))
        } else if !d.in_use.is_empty() {
            format!("in use: {}", d.in_use.join("; "))
        } else if d.size > crate::flash::MAX_SIZE {
            "bigger than 256 GiB (--force)".to_string()
        } else if !d.is_removable_media() {
            "not removable (--force)".to_string()
        } else {
            "candidate".to_string()
        }
    };
    match fmt {
        Format::Json => json(&serde_json::Value::Array(
            disks
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "device": format!("/dev/{}", d.name), "size": d.size, "removable": d.removable,
                        "transport": d.transport, "model": d.model, "in_use": d.in_use, "system": d.system,
                        "candidate": d.in_use.is_empty() && d.is_removable_media() && d.size <= crate::flash::MAX_SIZE,
                    })
                })
                .collect(),
        )),
        Format::Table => {
            let mut t = Table::new(&["DEVICE", "SIZE", "TRANSPORT", "REMOVABLE", "MODEL", "NOTE"]);
            for d in disks {
                t.row(vec![
                    format!("/dev/{}", d.name),
                    size(d.size),
                    d.transport.clone(),
                    if d.removable { "yes" } else { "no" }.to_string(),
                    d.model.clone(),
                    note(d),
                ]);
            }
            t.print();
        }
    }
}

/// Bytes as a person reads a disk's size.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{} MiB", b >> 20),
    }
}

/// Warned about in `osctl certs`: a certificate that ends within this
/// and is not renewed by the node.
const CERT_WARN_SECS: i64 = 30 * 86400;

/// Why a certificate needs the operator, if it does: it ends within 30
/// days (or has ended) and the node will not renew it.
fn cert_warning(c: &api::Certificate, now: i64) -> Option<String> {
    if !c.error.is_empty() || c.renewed || c.not_after - now > CERT_WARN_SECS {
        return None;
    }
    Some(if c.not_after <= now {
        format!("{} has expired and is not renewed automatically", c.name)
    } else {
        format!(
            "{} ends in {} and is not renewed automatically: replace it before then",
            c.name,
            duration((c.not_after - now) as u64)
        )
    })
}

fn unix_rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Every certificate of each node and its expiry; warnings after the table.
/// `osctl etcd members`: one row per member per node asked.
pub fn etcd_members(fmt: Format, results: &[(String, Vec<api::EtcdMember>)]) {
    match fmt {
        Format::Json => json(&serde_json::Value::Array(
            results
                .iter()
                .flat_map(|(node, list)| {
                    list.iter().map(move |m| {
                        serde_json::json!({
                            "node": node, "id": m.id, "name": m.name, "peer_urls": m.peer_urls,
                            "client_urls": m.client_urls, "learner": m.learner,
                        })
                    })
                })
                .collect(),
        )),
        Format::Table => {
            let mut t = Table::new(&["NODE", "ID", "NAME", "PEER URLS", "CLIENT URLS", "LEARNER"]);
            for (node, list) in results {
                for m in list {
                    t.row(vec![
                        node.clone(),
                        m.id.clone(),
                        if m.name.is_empty() { "(not started)".into() } else { m.name.clone() },
                        m.peer_urls.join(","),
                        m.client_urls.join(","),
                        if m.learner { "yes" } else { "no" }.into(),
                    ]);
                }
            }
            t.print();
        }
    }
}

pub fn certificates(fmt: Format, results: &[(String, Vec<api::Certificate>)], now: i64) {
    match fmt {
        Format::Json => json(&serde_json::Value::Array(
            results
                .iter()
                .flat_map(|(node, list)| {
                    list.iter().map(move |c| {
                        serde_json::json!({
                            "node": node, "name": c.name, "subject": c.subject, "issuer": c.issuer,
                            "not_before": c.not_before, "not_after": c.not_after,
                            "seconds_left": c.not_after - now, "renewed": c.renewed,
                            "error": c.error, "warning": cert_warning(c, now),
                        })
                    })
                })
                .collect(),
        )),
        Format::Table => {
            let mut t = Table::new(&["NODE", "CERTIFICATE", "SUBJECT", "ISSUER", "NOT AFTER", "LEFT", "RENEWED"]);
            for (node, list) in results {
                for c in list {
                    let renewed = if c.renewed { "yes" } else { "no" }.to_string();
                    if !c.error.is_empty() {
                        t.row(vec![
                            node.clone(),
                            c.name.clone(),
                            format!("({})", c.error),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            renewed,
                        ]);
                        continue;
                    }
                    let left = if c.not_after <= now { "expired".into() } else { duration((c.not_after - now) as u64) };
                    t.row(vec![
                        node.clone(),
                        c.name.clone(),
                        c.subject.clone(),
                        c.issuer.clone(),
                        unix_rfc3339(c.not_after),
                        left,
                        renewed,
                    ]);
                }
            }
            t.print();
            for (node, list) in results {
                for w in list.iter().filter_map(|c| cert_warning(c, now)) {
                    eprintln!("warning: {node}: {w}");
                }
            }
        }
    }
}

pub fn progress(total: u64, msg: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let style =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::new(total).with_style(style).with_message(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_warned_about_only_when_it_ends_soon_and_is_not_renewed() {
        let now = 1_000_000_000;
        let cert = |left: i64, renewed: bool| api::Certificate {
            name: "machine API CA".into(),
            not_after: now + left,
            renewed,
            ..Default::default()
        };
        assert_eq!(cert_warning(&cert(31 * 86400, false), now), None);
        assert_eq!(cert_warning(&cert(86400, true), now), None, "the node renews it");
        assert_eq!(
            cert_warning(&cert(29 * 86400, false), now).unwrap(),
            "machine API CA ends in 29d0h and is not renewed automatically: replace it before then"
        );
        assert_eq!(
            cert_warning(&cert(-1, false), now).unwrap(),
            "machine API CA has expired and is not renewed automatically"
        );
        let unread = api::Certificate { error: "gone".into(), ..cert(0, false) };
        assert_eq!(cert_warning(&unread, now), None);
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m5s");
        assert_eq!(duration(7300), "2h1m");
        assert_eq!(duration(90000), "1d1h");
    }
}
