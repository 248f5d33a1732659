//! Liveness, readiness and startup probes: a task per running container
//! and probe, with upstream's timing (initialDelaySeconds, periodSeconds,
//! timeoutSeconds, success/failureThreshold). exec runs through CRI
//! ExecSync, httpGet is a plain HTTP/1.1 GET (2xx/3xx succeed), tcpSocket a
//! connect. A failed liveness or startup probe stops the container (it is
//! then restarted by the pod's restartPolicy); readiness drives `ready`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe as ProbeSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Kubelet;
use crate::cri::v1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

/// What the probes of one running container found so far.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub ready: bool,
    pub started: bool,
    /// The probe tasks were started for this container.
    pub running: bool,
    /// Its pod's uid.
    pub uid: String,
}

/// Where a probe connects and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    Http { host: String, port: u16, path: String, headers: Vec<(String, String)> },
    Tcp { host: String, port: u16 },
    Unsupported(String),
}

fn port_of(container: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// The action of a probe spec, for a pod at `pod_ip`.
pub fn action(container: &Container, probe: &ProbeSpec, pod_ip: &str) -> Action {
    if let Some(cmd) = probe.exec.as_ref().and_then(|e| e.command.clone()) {
        return Action::Exec(cmd);
    }
    let host = |h: &Option<String>| h.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_string());
    if let Some(h) = &probe.http_get {
        if h.scheme.as_deref() == Some("HTTPS") {
            return Action::Unsupported("httpGet with scheme HTTPS is not supported".into());
        }
        let Some(port) = port_of(container, &h.port) else {
            return Action::Unsupported(format!("httpGet port {:?} is not a port of the container", h.port));
        };
        let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_string());
        let headers = h.http_headers.iter().flatten().map(|x| (x.name.clone(), x.value.clone())).collect();
        return Action::Http { host: host(&h.host), port, path, headers };
    }
    if let Some(t) = &probe.tcp_socket {
        return match port_of(container, &t.port) {
            Some(port) => Action::Tcp { host: host(&t.host), port },
            None => Action::Unsupported(format!("tcpSocket port {:?} is not a port of the container", t.port)),
        };
    }
    Action::Unsupported("only exec, httpGet and tcpSocket probes are supported".into())
}

/// A probe's timing field in seconds, `default` when unset, at least `min`.
fn seconds(field: Option<i32>, default: u64, min: u64) -> u64 {
    field.and_then(|s| u64::try_from(s).ok()).unwrap_or(default).max(min)
}

/// Runs a probe once: Ok on success, Err with the reason.
async fn run_once(k: &Kubelet, container_id: &str, action: &Action, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Exec(cmd) => {
            let r = k
                .cri
                .runtime
                .clone()
                .exec_sync(v1::ExecSyncRequest {
                    container_id: container_id.to_string(),
                    cmd: cmd.clone(),
                    timeout: timeout.as_secs() as i64,
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            if r.exit_code == 0 {
                Ok(())
            } else {
                Err(format!("command {cmd:?} exited with {}: {}", r.exit_code, String::from_utf8_lossy(&r.stdout)))
            }
        }
        other => run_network(other, timeout).await,
    }
}

/// Runs a probe that needs no runtime (httpGet, tcpSocket).
pub(crate) async fn run_network(action: &Action, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Exec(_) => Err("exec probes run through the runtime".into()),
        Action::Tcp { host, port } => {
            let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        Action::Http { host, port, path, headers } => {
            let get = async {
                let mut s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let mut req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
                );
                for (n, v) in headers {
                    req.push_str(&format!("{n}: {v}\r\n"));
                }
                req.push_str("\r\n");
                s.write_all(req.as_bytes()).await?;
                let mut head = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    let r = s.read(&mut head[n..]).await?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
            };
            let line = match tokio::time::timeout(timeout, get).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return Err(format!("Get \"http://{host}:{port}{path}\": {e}")),
                Err(_) => return Err(format!("Get \"http://{host}:{port}{path}\": context deadline exceeded")),
            };
            let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
        }
        Action::Unsupported(why) => Err(why.clone()),
    }
}

/// One probe of one running container.
pub struct Probe {
    /// The pod's namespace, name and uid.
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container_id: String,
    pub kind: Kind,
    /// The container's spec (named ports) and the probe's.
    pub container: Container,
    pub spec: ProbeSpec,
    pub pod_ip: String,
    /// The grace period of a stop after a failed liveness or startup probe.
    pub grace: i64,
}

/// Probes one container until it stops running.
pub async fn run(k: Arc<Kubelet>, p: Probe) {
    let Probe { namespace, pod, uid, container_id, kind, container, spec: probe, pod_ip, grace } = p;
    let name = container.name.clone();
    let what = match kind {
        Kind::Liveness => "Liveness",
        Kind::Readiness => "Readiness",
        Kind::Startup => "Startup",
    };
    let action = action(&container, &probe, &pod_ip);
    let period = Duration::from_secs(seconds(probe.period_seconds, 10, 1));
    let timeout = Duration::from_secs(seconds(probe.timeout_seconds, 1, 1));
    let success_needed = seconds(probe.success_threshold, 1, 1);
    let failure_needed = seconds(probe.failure_threshold, 3, 1);
    tokio::time::sleep(Duration::from_secs(seconds(probe.initial_delay_seconds, 0, 0))).await;
    let (mut successes, mut failures) = (0u64, 0u64);
    loop {
        let running = k
            .cri
            .runtime
            .clone()
            .container_status(v1::ContainerStatusRequest { container_id: container_id.clone(), verbose: false })
            .await
            .ok()
            .and_then(|r| r.into_inner().status)
            .is_some_and(|s| s.state == v1::ContainerState::ContainerRunning as i32);
        if !running {
            break;
        }
        let started = k.probe_results(&container_id).started;
        if kind == Kind::Startup && started {
            break;
        }
        if kind != Kind::Startup && !started {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        match run_once(&k, &container_id, &action, timeout).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= success_needed {
                    match kind {
                        Kind::Readiness => k.set_probe_result(&uid, &container_id, |r| r.ready = true),
                        Kind::Startup => k.set_probe_result(&uid, &container_id, |r| r.started = true),
                        Kind::Liveness => {}
                    }
                }
            }
            Err(why) => {
                successes = 0;
                failures += 1;
                tracing::debug!(container = %container_id, ?kind, "probe failed: {why}");
                if failures == failure_needed {
                    k.event(&namespace, &pod, &uid, "Warning", "Unhealthy", &format!("{what} probe failed: {why}"));
                }
                if failures >= failure_needed {
                    match kind {
                        Kind::Readiness => k.set_probe_result(&uid, &container_id, |r| r.ready = false),
                        Kind::Liveness | Kind::Startup => {
                            let text =
                                format!("Container {name} failed {} probe, will be restarted", what.to_lowercase());
                            k.event(&namespace, &pod, &uid, "Normal", "Killing", &text);
                            let mut rs = k.cri.runtime.clone();
                            let stop = v1::StopContainerRequest { container_id: container_id.clone(), timeout: grace };
                            if let Err(s) = rs.stop_container(stop).await {
                                tracing::warn!(container = %container_id, "stop after a failed probe: {}", s.message());
                            }
                            k.set_probe_result(&uid, &container_id, |r| r.ready = false);
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// The probe kinds a container has, in the order they matter.
pub fn kinds(container: &Container) -> Vec<(Kind, ProbeSpec)> {
    [
        (Kind::Startup, &container.startup_probe),
        (Kind::Liveness, &container.liveness_probe),
        (Kind::Readiness, &container.readiness_probe),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.clone().map(|p| (k, p)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn actions_from_specs() {
        let c: Container = typed(json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}));
        assert_eq!(
            action(&c, &typed(json!({"httpGet": {"port": "http", "path": "/healthz"}})), "10.0.0.2"),
            Action::Http { host: "10.0.0.2".into(), port: 8080, path: "/healthz".into(), headers: vec![] }
        );
        assert_eq!(
            action(&c, &typed(json!({"tcpSocket": {"port": 81}})), "10.0.0.2"),
            Action::Tcp { host: "10.0.0.2".into(), port: 81 }
        );
        assert_eq!(
            action(&c, &typed(json!({"exec": {"command": ["cat", "/ok"]}})), "x"),
            Action::Exec(vec!["cat".into(), "/ok".into()])
        );
        assert!(matches!(action(&c, &typed(json!({"httpGet": {"port": "nope"}})), "x"), Action::Unsupported(_)));
        assert!(matches!(action(&c, &typed(json!({"grpc": {"port": 1}})), "x"), Action::Unsupported(_)));
        let kinds = kinds(&typed(
            json!({"name": "c", "readinessProbe": {"tcpSocket": {"port": 1}}, "livenessProbe": {"exec": {"command": ["true"]}}}),
        ));
        assert_eq!(kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![Kind::Liveness, Kind::Readiness]);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = if req.starts_with("GET /ok ") { "200 OK" } else { "503 Service Unavailable" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let t = Duration::from_secs(1);
        let http = |path: &str| Action::Http { host: "127.0.0.1".into(), port, path: path.into(), headers: vec![] };
        assert!(probe_without_runtime(&http("/ok"), t).await.is_ok());
        assert_eq!(
            probe_without_runtime(&http("/bad"), t).await.unwrap_err(),
            "HTTP probe failed with statuscode: 503"
        );
        assert!(probe_without_runtime(&Action::Tcp { host: "127.0.0.1".into(), port }, t).await.is_ok());
    }

    /// http/tcp probes do not touch the runtime; a kubelet is not needed for them.
    async fn probe_without_runtime(a: &Action, t: Duration) -> Result<(), String> {
        super::run_network(a, t).await
    }
}
