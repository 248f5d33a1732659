//! Service supervision: start, watch, restart with back-off, stop in order.
//!
//! init reaps **every** child itself (it is PID 1, or a child subreaper in
//! host mode): one thread waits for SIGCHLD and calls `waitpid(-1)` until
//! nothing is left, handing each exit to the service that owns the pid and
//! dropping orphans' exits. Spawning and registering a pid happen under the
//! same lock the reaper takes, so no exit is ever lost to a race. That is why
//! children are started with `std::process` and never `tokio::process`
//! (whose own reaping would compete).
//!
//! Back-off after a crash: 1 s, 2 s, 4 s … up to 30 s, reset once a process
//! has run for 10 s. A requested restart or stop never waits for back-off.
//! Stopping sends SIGTERM, waits the grace period, then SIGKILL.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use machinery::api::{Event, LogLine, ServiceInfo, ServiceState};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::journal::Journal;

pub const STOP_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(10);
const LOG_LINES_KEPT: usize = 5000;

/// How to run one service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Desired {
    running: bool,
    restart_generation: u64,
}

#[derive(Debug, Clone)]
struct Status {
    state: ServiceState,
    pid: u32,
    restarts: u32,
    started: Option<Instant>,
    last_exit: String,
}

struct Service {
    spec: ServiceSpec,
    /// Arguments that replace the spec's from the next start on (`set_args`).
    args: Mutex<Option<Vec<String>>>,
    status: Mutex<Status>,
    desired: watch::Sender<Desired>,
    logs: Journal<LogLine>,
    log_file: Option<Mutex<std::fs::File>>,
}

type ExitWaiters = HashMap<i32, oneshot::Sender<WaitStatus>>;

struct Inner {
    services: Mutex<Vec<Arc<Service>>>,
    events: Arc<Journal<Event>>,
    log_dir: Option<PathBuf>,
}

/// Cheap to clone; all clones drive the same services.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn event(events: &Journal<Event>, kind: &str, message: String) {
    tracing::info!(kind, "{message}");
    events.push(Event { timestamp_ms: now_ms(), kind: kind.to_string(), message });
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no service named {0:?} (see `osctl services`)")]
    Unknown(String),
    #[error("installing the SIGCHLD handler: {0}")]
    Signal(std::io::Error),
}

impl Supervisor {
    /// Creates the supervisor (and, once per process, the reaper). Must run
    /// inside a tokio runtime, before any child is spawned.
    pub fn start(events: Arc<Journal<Event>>, log_dir: Option<PathBuf>) -> Result<Self, SupervisorError> {
        reaper()?;
        raise_open_file_limit(std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()));
        let inner = Arc::new(Inner { services: Mutex::new(Vec::new()), events, log_dir });
        Ok(Supervisor { inner })
    }

    /// Adds a service and starts it (services start in the order added).
    pub fn add(&self, spec: ServiceSpec) {
        let log_file = self.inner.log_dir.as_ref().and_then(|d| {
            let path = d.join(format!("{}.log", spec.name));
            std::fs::create_dir_all(d)
                .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(&path))
                .map_err(|e| tracing::warn!("cannot open {}: {e}", path.display()))
                .ok()
                .map(Mutex::new)
        });
        let (desired, _) = watch::channel(Desired { running: true, restart_generation: 0 });
        let svc = Arc::new(Service {
            spec,
            args: Mutex::new(None),
            status: Mutex::new(Status {
                state: ServiceState::Starting,
                pid: 0,
                restarts: 0,
                started: None,
                last_exit: String::new(),
            }),
            desired,
            logs: Journal::new(LOG_LINES_KEPT),
            log_file,
        });
        lock(&self.inner.services).push(svc.clone());
        tokio::spawn(run_service(self.inner.clone(), svc));
    }

    fn find(&self, name: &str) -> Result<Arc<Service>, SupervisorError> {
        lock(&self.inner.services)
            .iter()
            .find(|s| s.spec.name == name)
            .cloned()
            .ok_or_else(|| SupervisorError::Unknown(name.to_string()))
    }

    /// Starts the service with `args` from its next start on (a stopped
    /// service resumed, or a restart): etcd after a restore, whose first
    /// start forms a new cluster where the next ones restart on its data.
    pub fn set_args(&self, name: &str, args: Vec<String>) -> Result<(), SupervisorError> {
        *lock(&self.find(name)?.args) = Some(args);
        Ok(())
    }

    /// Restarts a service now, without back-off; returns once the request is
    /// taken (the old process is still stopping).
    pub fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        let svc = self.find(name)?;
        svc.desired.send_modify(|d| {
            d.running = true;
            d.restart_generation += 1;
        });
        Ok(())
    }

    pub fn list(&self) -> Vec<ServiceInfo> {
        lock(&self.inner.services)
            .iter()
            .map(|s| {
                let st = lock(&s.status);
                ServiceInfo {
                    name: s.spec.name.clone(),
                    state: st.state as i32,
                    pid: st.pid,
                    restarts: st.restarts,
                    uptime_seconds: st.started.map_or(0, |t| t.elapsed().as_secs()),
                    last_exit: st.last_exit.clone(),
                    rss_kib: if st.pid == 0 { 0 } else { rss_kib(&format!("/proc/{}/status", st.pid)) },
                    write_bytes: if st.pid == 0 { 0 } else { write_bytes(&format!("/proc/{}/io", st.pid)) },
                }
            })
            .collect()
    }

    pub fn logs(
        &self,
        name: &str,
        tail: usize,
    ) -> Result<(Vec<LogLine>, tokio::sync::broadcast::Receiver<LogLine>), SupervisorError> {
        Ok(self.find(name)?.logs.tail_and_follow(tail))
    }

    /// Stops every service, newest first, and waits until each has exited.
    pub async fn stop_all(&self) {
        let services: Vec<_> = lock(&self.inner.services).iter().rev().cloned().collect();
        for svc in services {
            stop_and_wait(&svc).await;
        }
    }

    /// Stops one service and waits until its process has exited; it stays
    /// stopped until [`Supervisor::resume`].
    pub async fn stop(&self, name: &str) -> Result<(), SupervisorError> {
        stop_and_wait(&*self.find(name)?).await;
        Ok(())
    }

    /// Starts a service [`Supervisor::stop`] stopped.
    pub fn resume(&self, name: &str) -> Result<(), SupervisorError> {
        self.find(name)?.desired.send_modify(|d| d.running = true);
        Ok(())
    }
}

async fn stop_and_wait(svc: &Service) {
    let mut rx = svc.desired.subscribe();
    svc.desired.send_modify(|d| d.running = false);
    // The service task reports Stopped once its process is gone.
    let stopped = || lock(&svc.status).state == ServiceState::Stopped;
    while !stopped() {
        let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
    }
}

static REAPER: OnceLock<Result<Mutex<ExitWaiters>, String>> = OnceLock::new();

/// The process-wide table of children waiting to be reaped. Reaping is
/// process-wide by nature (`waitpid(-1)`), so there is one reaper thread per
/// process, whatever the number of supervisors or runtimes.
fn reaper() -> Result<&'static Mutex<ExitWaiters>, SupervisorError> {
    let table = REAPER.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("reaper".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return ready_tx.send(Err(e.to_string())).unwrap_or(()),
            };
            rt.block_on(async move {
                let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
                    Ok(s) => s,
                    Err(e) => return ready_tx.send(Err(e.to_string())).unwrap_or(()),
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    if let Some(Ok(table)) = REAPER.get() {
                        reap(table);
                    }
                    // A signal can be missed between reaps; look again soon anyway.
                    let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
                }
            });
        });
        match spawned.map_err(|e| e.to_string()).and_then(|_| ready_rx.recv().map_err(|e| e.to_string())) {
            Ok(Ok(())) => Ok(Mutex::new(HashMap::new())),
            Ok(Err(e)) | Err(e) => Err(e),
        }
    });
    table.as_ref().map_err(|e| SupervisorError::Signal(std::io::Error::other(e.clone())))
}

/// `VmRSS` of a `/proc/<pid>/status` file, in KiB (0 when unreadable).
pub fn rss_kib(status_path: &str) -> u64 {
    proc_field(status_path, "VmRSS:")
}

/// `write_bytes` of a `/proc/<pid>/io` file: what the process caused to be
/// written to storage (0 when unreadable).
pub fn write_bytes(io_path: &str) -> u64 {
    proc_field(io_path, "write_bytes:")
}

/// A `Name:   123 kB` field of a /proc file.
pub fn proc_field(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Reaps every child that has exited; owned pids go to their waiters.
fn reap(children: &Mutex<ExitWaiters>) {
    let mut waiters = lock(children);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                match waiters.remove(&pid.as_raw()) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => {
                        tracing::debug!(pid = pid.as_raw(), "reaped orphan: {}", describe(&status))
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: nothing left
        }
    }
}

/// Raises the open-file limit services inherit: the kernel starts PID 1
/// at 1,024 (soft) / 4,096 (hard), too few for an API server's
/// connections or containerd. As root, soft and hard go to the kernel's
/// `nr_open` (what systemd's `LimitNOFILE=infinity` means); otherwise the
/// soft limit goes to the hard one. A failure is logged; services then
/// keep the old limit.
fn raise_open_file_limit(nr_open: Option<u64>) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let wanted = nr_open.unwrap_or(hard).max(hard);
    let raised = setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted)
        .or_else(|_| if soft < hard { setrlimit(Resource::RLIMIT_NOFILE, hard, hard) } else { Ok(()) });
    if let Err(e) = raised {
        tracing::warn!("raising the open-file limit from {soft}/{hard}: {e}");
    }
}

fn set(svc: &Service, f: impl FnOnce(&mut Status)) {
    f(&mut lock(&svc.status));
    // Wake stop_all(), which waits on this channel.
    svc.desired.send_modify(|_| {});
}

fn spawn(svc: &Arc<Service>) -> std::io::Result<(u32, oneshot::Receiver<WaitStatus>)> {
    use std::os::unix::process::CommandExt as _;
    let spec = &svc.spec;
    let args = lock(&svc.args).clone().unwrap_or_else(|| spec.args.clone());
    let mut cmd = Command::new(&spec.program);
    cmd.args(&args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's ^C reaches init, not services.
        .process_group(0);
    let mut waiters = lock(reaper().map_err(|e| std::io::Error::other(e.to_string()))?);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (tx, rx) = oneshot::channel();
    waiters.insert(pid as i32, tx);
    drop(waiters);
    if let Some(out) = child.stdout.take() {
        capture(svc.clone(), "stdout", out);
    }
    if let Some(err) = child.stderr.take() {
        capture(svc.clone(), "stderr", err);
    }
    Ok((pid, rx))
}

/// Runs a one-off command (not a service) to its end and returns its
/// output. Its exit comes from the reaper, which reaps every child of init:
/// `Child::wait` (and tokio's `Command::output`) would find it gone (ECHILD).
pub async fn output(mut cmd: Command) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::ExitStatusExt as _;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, exit) = {
        let mut waiters = lock(reaper().map_err(|e| std::io::Error::other(e.to_string()))?);
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        (child, rx)
    };
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read_all(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read_all(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = match exit.await.map_err(|_| std::io::Error::other("the reaper is gone"))? {
        WaitStatus::Exited(_, code) => std::process::ExitStatus::from_raw(code << 8),
        WaitStatus::Signaled(_, sig, _) => std::process::ExitStatus::from_raw(sig as i32),
        other => return Err(std::io::Error::other(format!("unexpected wait status {other:?}"))),
    };
    let joined = |r: Result<Vec<u8>, tokio::task::JoinError>| r.map_err(std::io::Error::other);
    Ok(std::process::Output { status, stdout: joined(stdout.await)?, stderr: joined(stderr.await)? })
}

/// Reads a child's output line by line into its journal (and log file).
fn capture(svc: Arc<Service>, stream: &'static str, pipe: impl Read + Send + 'static) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
            buf.clear();
            if let Some(f) = &svc.log_file {
                let _ = writeln!(lock(f), "{line}");
            }
            svc.logs.push(LogLine { timestamp_ms: now_ms(), stream: stream.to_string(), line });
        }
    });
}

/// Sends SIGTERM, waits up to the grace period, then SIGKILL.
async fn terminate(pid: u32, exit: &mut oneshot::Receiver<WaitStatus>) -> WaitStatus {
    let pid_t = Pid::from_raw(pid as i32);
    let _ = kill(pid_t, Signal::SIGTERM);
    match tokio::time::timeout(STOP_GRACE, &mut *exit).await {
        Ok(Ok(status)) => status,
        _ => {
            let _ = kill(pid_t, Signal::SIGKILL);
            exit.await.unwrap_or(WaitStatus::Signaled(pid_t, Signal::SIGKILL, false))
        }
    }
}

/// Waits until what is wanted of the service changes; false when nobody
/// can change it any more. [`set`] also wakes the channel (for
/// `stop_all`) without changing it: those wake-ups are skipped, or a
/// stopped or backing-off service would spin.
async fn next_desired(desired: &mut watch::Receiver<Desired>) -> bool {
    let seen = *desired.borrow_and_update();
    while desired.changed().await.is_ok() {
        if *desired.borrow_and_update() != seen {
            return true;
        }
    }
    false
}

async fn run_service(inner: Arc<Inner>, svc: Arc<Service>) {
    let name = svc.spec.name.clone();
    let mut desired = svc.desired.subscribe();
    let mut handled_generation = desired.borrow().restart_generation;
    let mut backoff = BACKOFF_START;
    loop {
        let want = *desired.borrow_and_update();
        if !want.running {
            set(&svc, |s| s.state = ServiceState::Stopped);
            if !next_desired(&mut desired).await {
                return;
            }
            continue;
        }
        handled_generation = want.restart_generation.max(handled_generation);
        set(&svc, |s| s.state = ServiceState::Starting);
        let crashed = match spawn(&svc) {
            Err(e) => {
                let msg = format!("cannot start {}: {e}", svc.spec.program.display());
                event(&inner.events, "service", format!("{name}: {msg}"));
                set(&svc, |s| s.last_exit = msg);
                true
            }
            Ok((pid, mut exit)) => {
                let started = Instant::now();
                set(&svc, |s| {
                    s.state = ServiceState::Running;
                    s.pid = pid;
                    s.started = Some(started);
                });
                event(&inner.events, "service", format!("{name}: started (pid {pid})"));
                let (status, requested) = loop {
                    tokio::select! {
                        status = &mut exit => break (status.ok(), false),
                        changed = desired.changed() => {
                            let want = *desired.borrow_and_update();
                            if changed.is_err() || !want.running || want.restart_generation != handled_generation {
                                set(&svc, |s| s.state = ServiceState::Stopping);
                                break (Some(terminate(pid, &mut exit).await), true);
                            }
                        }
                    }
                };
                let how = status.as_ref().map_or_else(|| "lost".to_string(), describe);
                event(&inner.events, "service", format!("{name}: exited ({how})"));
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_START;
                }
                set(&svc, |s| {
                    s.pid = 0;
                    s.started = None;
                    s.last_exit = how;
                    if requested && desired.borrow().running {
                        s.restarts += 1;
                    }
                });
                !requested
            }
        };
        if crashed {
            set(&svc, |s| {
                s.state = ServiceState::Backoff;
                s.restarts += 1;
            });
            event(&inner.events, "service", format!("{name}: restarting in {}s", backoff.as_secs()));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = next_desired(&mut desired) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written and synced on a real disk counts in this process'
    /// `write_bytes` (the write budget's per-process figure).
    #[test]
    fn write_bytes_counts_what_reaches_the_disk() {
        use std::io::Write as _;
        let before = write_bytes("/proc/self/io");
        // Beside the test binary: on a disk (a tmpfs /tmp counts nothing).
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(dir.path().join("data")).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let after = write_bytes("/proc/self/io");
        assert!(after >= before + (1 << 20), "write_bytes {before} → {after} after a synced MiB");
        assert_eq!(write_bytes("/proc/self/no-such-file"), 0);
    }

    #[test]
    fn services_inherit_a_raised_open_file_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // PID 1's starting point: a low soft limit.
        setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard), hard).unwrap();
        raise_open_file_limit(Some(hard));
        // Children inherit the limit (POSIX); a child is not spawned here, as
        // another test's supervisor would reap it.
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, hard);
    }

    fn sh(name: &str, script: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
        }
    }

    async fn wait_for(sup: &Supervisor, name: &str, f: impl Fn(&ServiceInfo) -> bool) -> ServiceInfo {
        for _ in 0..200 {
            if let Some(s) = sup.list().into_iter().find(|s| s.name == name).filter(|s| f(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{name} never reached the expected state: {:?}", sup.list());
    }

    /// A one-off command's exit is the reaper's to collect: waiting on it
    /// as a plain child found it reaped already (ECHILD, "No child processes").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_one_off_command_gives_its_output_and_exit_beside_the_reaper() {
        let _sup = Supervisor::start(Arc::new(Journal::new(100)), None).unwrap();
        for _ in 0..20 {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
            let out = output(cmd).await.unwrap();
            assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "kill -9 $$"]);
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(output(cmd).await.unwrap().status.signal(), Some(9));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarts_a_crashed_service_and_captures_logs() {
        let sup = Supervisor::start(Arc::new(Journal::new(100)), None).unwrap();
        sup.add(sh("crashy", "echo hello; echo oops >&2; exit 3"));
        let s = wait_for(&sup, "crashy", |s| s.restarts >= 1).await;
        assert_eq!(s.last_exit, "exit status 3");
        let (lines, _) = sup.logs("crashy", 0).unwrap();
        assert!(lines.iter().any(|l| l.line == "hello" && l.stream == "stdout"), "{lines:?}");
        assert!(lines.iter().any(|l| l.line == "oops" && l.stream == "stderr"), "{lines:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_and_stop_a_running_service() {
        let sup = Supervisor::start(Arc::new(Journal::new(100)), None).unwrap();
        sup.add(sh("sleeper", "exec sleep 1000"));
        let first = wait_for(&sup, "sleeper", |s| s.state == ServiceState::Running as i32).await;
        sup.restart("sleeper").unwrap();
        let second = wait_for(&sup, "sleeper", |s| s.state == ServiceState::Running as i32 && s.pid != first.pid).await;
        assert_eq!(second.restarts, 1);
        assert_eq!(second.last_exit, "killed by SIGTERM");
        sup.stop_all().await;
        let s = wait_for(&sup, "sleeper", |s| s.state == ServiceState::Stopped as i32).await;
        assert_eq!(s.pid, 0);
        assert!(kill(Pid::from_raw(second.pid as i32), None).is_err(), "process still alive");
        assert!(matches!(sup.restart("nope"), Err(SupervisorError::Unknown(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_program_backs_off() {
        let sup = Supervisor::start(Arc::new(Journal::new(100)), None).unwrap();
        sup.add(ServiceSpec { name: "ghost".into(), program: "/nonexistent/ghost".into(), args: vec![], env: vec![] });
        let s = wait_for(&sup, "ghost", |s| s.state == ServiceState::Backoff as i32).await;
        assert!(s.last_exit.contains("cannot start /nonexistent/ghost"), "{}", s.last_exit);
        // It waits out its back-off (1 s, then 2 s): no more than one
        // further attempt in the next half second, not a spin.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = sup.list().into_iter().find(|s| s.name == "ghost").unwrap();
        assert!(later.restarts <= s.restarts + 1, "{} attempts in 0.5 s after {}", later.restarts, s.restarts);
    }
}
