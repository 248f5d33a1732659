//! One leader for the controllers and the scheduler when several API
//! servers share one store (etcd): each candidate tries to hold the Lease
//! `kube-system/plinth-controller-manager`, as upstream's
//! kube-controller-manager does with client-go's leader election, and runs
//! the controllers only while it holds it.
//!
//! Upstream's timings: a lease lasts 15 s, the holder renews every 2 s and
//! gives up (stops its controllers) when it could not renew for 10 s;
//! a candidate retries every 2 s. A lease counts as expired when its record
//! has not changed for the lease duration *as this candidate observed it*
//! (its own monotonic clock), so clocks that disagree between nodes do not
//! shorten or lengthen it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions, new_uid};
use orchestrator_apimachinery::typed;

use crate::rt;

pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "plinth-controller-manager";

/// A candidate and its timings.
#[derive(Debug, Clone)]
pub struct Election {
    /// Who holds the lease: the host's name and a fresh uid (upstream's
    /// `hostname_uuid`), so two processes on one host differ.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Election {
    /// A candidate on `host` with upstream's timings (15 s, 10 s, 2 s).
    pub fn new(host: &str) -> Election {
        Election {
            identity: format!("{host}_{}", new_uid()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The lease record as this candidate last saw it, and when it saw it change.
#[derive(Debug, Default)]
struct Observed {
    record: Option<LeaseSpec>,
    at: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Takes or renews the lease once; whether this candidate holds it now.
fn try_acquire_or_renew(reg: &Registry, e: &Election, seen: &mut Observed) -> Result<bool, ApiError> {
    let lease_rt = rt("Lease");
    let duration = i32::try_from(e.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let stored = match reg.get(lease_rt, Some(LEASE_NAMESPACE), LEASE_NAME) {
        Err(err) if err.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(e.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            let obj = typed::encode(&lease, "Lease")?;
            return match reg.create(lease_rt, Some(LEASE_NAMESPACE), obj, &WriteOptions::default()) {
                Ok(_) => Ok(true),
                Err(err) if err.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        }
        r => r?,
    };
    let mut lease: Lease = typed::decode(stored.clone(), "Lease")?;
    let spec = lease.spec.clone().unwrap_or_default();
    if seen.record.as_ref() != Some(&spec) {
        *seen = Observed { record: Some(spec.clone()), at: Some(Instant::now()) };
    }
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let mine = holder == e.identity;
    let held_for = spec.lease_duration_seconds.map_or(e.lease_duration, |s| Duration::from_secs(s.max(0) as u64));
    let expired = seen.at.is_none_or(|at| at.elapsed() > held_for);
    if !mine && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(e.identity.clone()),
        lease_duration_seconds: Some(duration),
        acquire_time: if mine { spec.acquire_time.clone() } else { Some(now()) },
        renew_time: Some(now()),
        lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
        ..spec
    });
    // The update carries the resourceVersion read: a candidate that raced
    // us to it gets 409 and stays a candidate.
    match reg.update(
        lease_rt,
        Some(LEASE_NAMESPACE),
        LEASE_NAME,
        typed::encode(&lease, "Lease")?,
        Part::Main,
        &WriteOptions::default(),
    ) {
        Ok(_) => Ok(true),
        Err(err) if err.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// One attempt, off the async threads (the store may wait on etcd).
async fn attempt(reg: &Arc<Registry>, e: &Election, mut seen: Observed) -> (Observed, Result<bool, ApiError>) {
    let (reg, e) = (reg.clone(), e.clone());
    tokio::task::spawn_blocking(move || {
        let r = try_acquire_or_renew(&reg, &e, &mut seen);
        (seen, r)
    })
    .await
    .unwrap_or_else(|j| (Observed::default(), Err(ApiError::internal(format!("leader election: {j}")))))
}

/// Runs the controllers (`crate::spawn_all`) while `e` holds the lease:
/// waits for it, renews it, and stops them when it cannot renew within
/// the renew deadline or another candidate took it over.
pub fn spawn_elected(reg: Arc<Registry>, e: Election) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(identity = %e.identity, "leader election: candidate for {LEASE_NAMESPACE}/{LEASE_NAME}");
        let mut seen = Observed::default();
        loop {
            loop {
                let (s, r) = attempt(&reg, &e, seen).await;
                seen = s;
                match r {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(err) => tracing::warn!("leader election: {err}"),
                }
                tokio::time::sleep(e.retry_period).await;
            }
            tracing::info!(identity = %e.identity, "leader election: holding {LEASE_NAMESPACE}/{LEASE_NAME}; running the controllers");
            let controllers = crate::spawn_all(reg.clone());
            let mut renewed = Instant::now();
            let why = loop {
                tokio::time::sleep(e.retry_period).await;
                let (s, r) = attempt(&reg, &e, seen).await;
                seen = s;
                match r {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break "another candidate holds the lease".to_string(),
                    Err(err) => tracing::warn!("leader election: renewing: {err}"),
                }
                if renewed.elapsed() > e.renew_deadline {
                    break format!("not renewed for {:?}", e.renew_deadline);
                }
            };
            controllers.abort();
            tracing::warn!(identity = %e.identity, "leader election: lost {LEASE_NAMESPACE}/{LEASE_NAME} ({why}); controllers stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(reg: &Registry) -> LeaseSpec {
        let o = reg.get(rt("Lease"), Some(LEASE_NAMESPACE), LEASE_NAME).unwrap();
        typed::decode::<Lease>(o, "Lease").unwrap().spec.unwrap()
    }

    /// Two candidates on one registry: the first takes the lease and renews
    /// it; the second waits while it is fresh and takes it over, counting a
    /// transition, once it has not changed for the lease duration.
    #[test]
    fn one_holder_and_a_takeover_after_the_lease_lapses() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let short = |host: &str| Election { lease_duration: Duration::from_secs(1), ..Election::new(host) };
        let (a, b) = (short("a"), short("b"));
        let (mut seen_a, mut seen_b) = (Observed::default(), Observed::default());
        assert!(try_acquire_or_renew(&reg, &a, &mut seen_a).unwrap());
        assert!(!try_acquire_or_renew(&reg, &b, &mut seen_b).unwrap(), "held and fresh");
        assert!(try_acquire_or_renew(&reg, &a, &mut seen_a).unwrap(), "the holder renews");
        assert!(!try_acquire_or_renew(&reg, &b, &mut seen_b).unwrap(), "renewed: still fresh");
        assert_eq!(lease(&reg).holder_identity.as_deref(), Some(a.identity.as_str()));
        std::thread::sleep(Duration::from_millis(1200));
        assert!(try_acquire_or_renew(&reg, &b, &mut seen_b).unwrap(), "lapsed: taken over");
        let spec = lease(&reg);
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some(b.identity.as_str()), Some(1)));
        assert!(!try_acquire_or_renew(&reg, &a, &mut seen_a).unwrap(), "the old holder sees the new one");
    }
}
