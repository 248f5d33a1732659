//! Offline operation: when the API server does not answer, the kubelet
//! keeps running what it was last told to run. A pass whose list of the
//! node's pods fails works from the last list that succeeded, and a sync
//! whose references (ConfigMaps, Secrets, tokens, the API's Service) or,
//! while the pod list fails, claim volumes cannot be read uses the ones
//! its last sync read — so crashed
//! containers are restarted per restartPolicy and probes keep running,
//! and nothing is stopped because the API is gone. Status writes fail
//! meanwhile and are retried (a failed sync is due again in 2 s); once the
//! API answers they are sent, with no container restarted by the
//! reconnection itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::typed;
use serde_json::Value;

use crate::{Kubelet, KubeletError, Prefetched, claims};

/// What the kubelet last heard from the API server.
#[derive(Default)]
pub(crate) struct LastKnown {
    /// The node's pods, as the last list that succeeded returned them.
    pods: Option<Vec<Pod>>,
    /// Each pod's references as its last sync fetched them, by uid.
    refs: HashMap<String, Arc<Prefetched>>,
    /// Each pod's claim volumes as its last sync resolved them, by uid.
    claims: HashMap<String, BTreeMap<String, PathBuf>>,
    /// Since when the API server has not answered (None: it answers).
    since: Option<Instant>,
}

impl Kubelet {
    /// The node's pods, decoded once for the whole pass: as listed, or,
    /// when the list fails, as last listed.
    pub(crate) fn pods_or_last(&self, listed: Result<Vec<Value>, ApiError>) -> Result<Vec<Pod>, KubeletError> {
        let mut last = self.last_known.lock().expect("not poisoned");
        match listed {
            Ok(pods) => {
                let pods: Vec<Pod> = pods.into_iter().map(|p| typed::decode(p, "Pod")).collect::<Result<_, _>>()?;
                if let Some(since) = last.since.take() {
                    tracing::info!(
                        "API server reachable again after {:.0?} on our own: reconciling the pod statuses",
                        since.elapsed()
                    );
                }
                let live: HashSet<&str> = pods.iter().map(|p| crate::pod::ids(p).2).collect();
                last.refs.retain(|uid, _| live.contains(uid.as_str()));
                last.claims.retain(|uid, _| live.contains(uid.as_str()));
                last.pods = Some(pods.clone());
                Ok(pods)
            }
            Err(e) => {
                let Some(pods) = last.pods.clone() else { return Err(e.into()) };
                if last.since.is_none() {
                    last.since = Some(Instant::now());
                    tracing::warn!(
                        "list this node's pods: {e}; running the {} pods last listed on our own",
                        pods.len()
                    );
                }
                Ok(pods)
            }
        }
    }

    /// A pod's references, fetched, or, when the API does not answer, as its last sync fetched them.
    pub(crate) async fn prefetch_or_last(&self, p: &Pod) -> Result<Arc<Prefetched>, KubeletError> {
        let uid = crate::pod::ids(p).2.to_string();
        match self.prefetch(p).await {
            Ok(refs) => {
                let refs = Arc::new(refs);
                self.last_known.lock().expect("not poisoned").refs.insert(uid, refs.clone());
                Ok(refs)
            }
            Err(KubeletError::Api(e)) => {
                let last = self.last_known.lock().expect("not poisoned").refs.get(&uid).cloned();
                last.ok_or(KubeletError::Api(e))
            }
            Err(e) => Err(e),
        }
    }

    /// A pod's claim volumes, resolved, or, while the pod list fails, as its
    /// last sync resolved them (the reason to wait is a string: the list
    /// tells an unreachable API from a claim that is not there).
    pub(crate) async fn claims_or_last(&self, pod: &Pod) -> Result<BTreeMap<String, PathBuf>, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        match claims::resolve(self, pod).await {
            Ok(c) => {
                self.last_known.lock().expect("not poisoned").claims.insert(uid, c.clone());
                Ok(c)
            }
            Err(why) => {
                let last = self.last_known.lock().expect("not poisoned");
                match last.claims.get(&uid) {
                    Some(c) if last.since.is_some() => Ok(c.clone()),
                    _ => Err(why),
                }
            }
        }
    }
}
