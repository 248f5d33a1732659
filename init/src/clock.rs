//! The wall clock on boards without a real-time clock (a Raspberry Pi
//! starts at 1970, where every certificate is "not valid yet").
//!
//! Before anything checks a certificate PID 1 sets the clock forward to a
//! **floor** when it is behind it: the newest of the image's build time
//! (`layout::ROOT_BUILD_TIME`), the newest time this node has seen (kept
//! on STATE, written every [`SAVE_EVERY`] and at shutdown), and the
//! `notBefore` of the CA the node trusts for clients (certificates issued
//! by it start no later: `machinery::pki` backdates leaves to their CA).
//! Once the network is up, SNTP (`crate::sntp`) steps it to the real time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::journal::Journal;
use crate::supervisor::event;

/// On STATE: the newest time seen (Unix seconds).
pub const SAVED: &str = "clock";
/// How often the time seen is saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("setting the clock to {secs} (Unix seconds): {source}")]
    Set { secs: u64, source: nix::errno::Errno },
    #[error("{path}: {source}")]
    Save { path: PathBuf, source: std::io::Error },
}

/// The system clock, behind a trait so the floor logic is unit-tested.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    fn set(&self, t: SystemTime) -> Result<(), ClockError>;
}

/// `CLOCK_REALTIME`.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn set(&self, t: SystemTime) -> Result<(), ClockError> {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ts = nix::sys::time::TimeSpec::from_duration(d);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|source| ClockError::Set { secs: d.as_secs(), source })
    }
}

/// Unix seconds in a one-line file (the build time, the saved time).
pub fn parse_secs(text: &str) -> Option<SystemTime> {
    let secs: u64 = text.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The clock of a node, with where it keeps the newest time seen.
pub struct Keeper {
    clock: Arc<dyn Clock>,
    saved: PathBuf,
    events: Arc<Journal<machinery::api::Event>>,
}

impl Keeper {
    pub fn new(clock: Arc<dyn Clock>, saved: PathBuf, events: Arc<Journal<machinery::api::Event>>) -> Keeper {
        Keeper { clock, saved, events }
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Sets the clock forward to `floor` when it is behind it, saying so
    /// (`why` names the floor's source). Returns whether it was set.
    pub fn raise_to(&self, floor: SystemTime, why: &str) -> bool {
        let now = self.clock.now();
        if now >= floor {
            return false;
        }
        match self.clock.set(floor) {
            Ok(()) => {
                event(
                    &self.events,
                    "clock",
                    format!("clock set from floor ({why}): {} → {} (Unix seconds)", secs(now), secs(floor)),
                );
                true
            }
            Err(e) => {
                event(&self.events, "clock", format!("cannot set the clock from its floor ({why}): {e}"));
                false
            }
        }
    }

    /// The boot-time floor: the image's build time and the newest time
    /// saved on STATE, whichever is later.
    pub fn apply_floor(&self, build_time: &Path) -> bool {
        let read = |p: &Path| std::fs::read_to_string(p).ok().as_deref().and_then(parse_secs);
        let candidates = [(read(build_time), "the image's build time"), (read(&self.saved), "the newest time seen")];
        match candidates.into_iter().filter_map(|(t, why)| Some((t?, why))).max_by_key(|(t, _)| *t) {
            Some((floor, why)) => self.raise_to(floor, why),
            None => false,
        }
    }

    /// The floor a trusted CA gives: no certificate it issued starts
    /// before its own `notBefore`.
    pub fn raise_to_ca(&self, ca_pem: &str) -> bool {
        match machinery::pki::cert_info(ca_pem) {
            Ok(info) if info.not_before > 0 => {
                self.raise_to(UNIX_EPOCH + Duration::from_secs(info.not_before as u64), "the client CA's notBefore")
            }
            _ => false,
        }
    }

    /// Saves the time now as the newest seen (never moving it back).
    pub fn save(&self) -> Result<(), ClockError> {
        let now = self.clock.now();
        let kept = std::fs::read_to_string(&self.saved).ok().as_deref().and_then(parse_secs);
        if kept.is_some_and(|k| k >= now) {
            return Ok(());
        }
        crate::store::write_private(&self.saved, format!("{}\n", secs(now)).as_bytes())
            .map_err(|source| ClockError::Save { path: self.saved.clone(), source })
    }

    /// Steps the clock to `t` (an SNTP answer) when it is off by more
    /// than half a second.
    pub fn step_to(&self, t: SystemTime, server: &str) {
        let now = self.clock.now();
        let off = t.duration_since(now).unwrap_or_else(|e| e.duration());
        if off < Duration::from_millis(500) {
            return;
        }
        match self.clock.set(t) {
            Ok(()) => event(
                &self.events,
                "clock",
                format!("clock stepped by SNTP ({server}): {} → {} (Unix seconds)", secs(now), secs(t)),
            ),
            Err(e) => event(&self.events, "clock", format!("cannot step the clock to {server}'s time: {e}")),
        }
    }
}

impl Keeper {
    /// Once the network is up: SNTP from `servers` (retried every
    /// [`crate::sntp::RETRY`] until one answers, then every
    /// [`crate::sntp::RESYNC`]), and the time seen saved every [`SAVE_EVERY`].
    pub async fn keep(self: Arc<Self>, servers: Vec<String>, nameservers: Vec<std::net::IpAddr>) {
        let mut last_sync: Option<tokio::time::Instant> = None;
        let mut complained = false;
        loop {
            if last_sync.is_none_or(|t| t.elapsed() >= crate::sntp::RESYNC) {
                let me = self.clone();
                match crate::sntp::sync(&servers, &nameservers, &move || me.now()).await {
                    Ok((server, t)) => {
                        self.step_to(t, &server);
                        last_sync = Some(tokio::time::Instant::now());
                    }
                    Err(e) if !complained => {
                        complained = true;
                        event(&self.events, "clock", format!("SNTP: no server answered ({e}); retrying"));
                    }
                    Err(_) => {}
                }
            }
            if let Err(e) = self.save() {
                tracing::warn!("{e}");
            }
            tokio::time::sleep(if last_sync.is_some() { SAVE_EVERY } else { crate::sntp::RETRY }).await;
        }
    }
}

/// A clock for tests: starts where told, records what it is set to.
#[cfg(test)]
#[derive(Debug)]
pub struct FakeClock(pub std::sync::Mutex<SystemTime>);

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }

    fn set(&self, t: SystemTime) -> Result<(), ClockError> {
        *self.0.lock().unwrap() = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeper(start: SystemTime, dir: &Path) -> (Keeper, Arc<FakeClock>, Arc<Journal<machinery::api::Event>>) {
        let clock = Arc::new(FakeClock(std::sync::Mutex::new(start)));
        let events = Arc::new(Journal::new(100));
        (Keeper::new(clock.clone(), dir.join(SAVED), events.clone()), clock, events)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn said(events: &Journal<machinery::api::Event>) -> String {
        events.tail_and_follow(100).0.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn the_floor_is_the_newest_of_build_time_and_time_seen() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build-time");
        std::fs::write(&build, "1764000000\n").unwrap();
        // A Pi at 1970: set to the build time, and said.
        let (k, clock, events) = keeper(at(5), dir.path());
        assert!(k.apply_floor(&build));
        assert_eq!(clock.now(), at(1_764_000_000));
        assert!(said(&events).contains("clock set from floor (the image's build time): 5 → 1764000000"));
        // Time passes; it is saved; the next boot starts from it.
        *clock.0.lock().unwrap() = at(1_765_000_000);
        k.save().unwrap();
        let (k, clock, events) = keeper(at(7), dir.path());
        assert!(k.apply_floor(&build));
        assert_eq!(clock.now(), at(1_765_000_000));
        assert!(said(&events).contains("the newest time seen"));
        // A clock already ahead is left alone, and the saved time never goes back.
        let (k, clock, events) = keeper(at(1_800_000_000), dir.path());
        assert!(!k.apply_floor(&build));
        assert_eq!(clock.now(), at(1_800_000_000));
        assert_eq!(said(&events), "");
        *clock.0.lock().unwrap() = at(1_700_000_000);
        k.save().unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(SAVED)).unwrap(), "1765000000\n");
        // Garbage or no files: no floor, nothing set.
        std::fs::write(&build, "yesterday").unwrap();
        let empty = tempfile::tempdir().unwrap();
        let (k, clock, _) = keeper(at(9), empty.path());
        assert!(!k.apply_floor(&build));
        assert_eq!(clock.now(), at(9));
    }

    #[test]
    fn sntp_steps_only_a_clock_that_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let (k, clock, events) = keeper(at(1_000), dir.path());
        k.step_to(at(1_000) + Duration::from_millis(200), "ntp1");
        assert_eq!(clock.now(), at(1_000));
        k.step_to(at(900), "ntp1");
        assert_eq!(clock.now(), at(900), "backwards too");
        assert!(said(&events).contains("clock stepped by SNTP (ntp1): 1000 → 900"));
    }

    /// A node whose clock is still at its floor (no network: no SNTP)
    /// accepts a client certificate issued after the image was built: the
    /// CA's notBefore raises the floor, and leaves start there.
    #[test]
    fn a_valid_client_cert_is_not_rejected_at_the_floor() {
        use rustls::pki_types::{CertificateDer, UnixTime};
        use rustls::server::WebPkiClientVerifier;

        let dir = tempfile::tempdir().unwrap();
        let ca = machinery::pki::generate_ca("demo").unwrap();
        let client =
            machinery::pki::issue_client(&ca, "alice", machinery::roles::Role::Admin, machinery::pki::LEAF_LIFETIME)
                .unwrap();
        let ca_info = machinery::pki::cert_info(&ca.cert_pem).unwrap();
        // The image was built a month before the CA was made.
        let build = dir.path().join("build-time");
        std::fs::write(&build, format!("{}\n", ca_info.not_before - 30 * 86400)).unwrap();
        let (k, clock, _) = keeper(at(0), dir.path());
        k.apply_floor(&build);
        k.raise_to_ca(&ca.cert_pem);

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(machinery::pki::pem_to_der(&ca.cert_pem).unwrap())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let leaf = CertificateDer::from(machinery::pki::pem_to_der(&client.cert_pem).unwrap());
        let verify = |t: SystemTime| {
            verifier.verify_client_cert(&leaf, &[], UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap()))
        };
        assert!(verify(clock.now()).is_ok(), "accepted at the floor: {:?}", verify(clock.now()));
        // The build time alone would not have done: "not valid yet".
        let e = verify(at(ca_info.not_before as u64 - 30 * 86400)).unwrap_err();
        assert!(format!("{e:?}").contains("NotValidYet"), "{e:?}");
    }
}
