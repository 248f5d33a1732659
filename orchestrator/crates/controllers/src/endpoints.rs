//! Endpoints and EndpointSlices for Services with a selector: the matching
//! pods' IPs (ready ones as addresses, others as not ready) and the
//! service's ports resolved against the pods' named container ports.

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::replicaset::labels;
use crate::{controller_ref, create_typed, is_deleting, list_typed, name, node_name, pod_ready, rt, uid};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions};
use orchestrator_apimachinery::typed::change_as;

fn target_port(port: &ServicePort, pod: Option<&Pod>) -> i32 {
    match &port.target_port {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(wanted)) => pod
            .and_then(|p| p.spec.as_ref())
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(wanted.as_str()))
            .map_or(0, |p| p.container_port),
        None => port.port,
    }
}

/// Creates `desired`, or gives the stored object its labels, its owner
/// references (where `desired` has some) and, through `content`, everything
/// but metadata.
fn upsert<K>(reg: &Registry, ns: &str, desired: K, content: impl Fn(&mut K, &K)) -> Result<(), ApiError>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Serialize + Clone + PartialEq,
{
    let name = name(desired.metadata()).to_string();
    let mut cur = match reg.get(rt(K::KIND), Some(ns), &name) {
        Err(e) if e.code == 404 => return create_typed(reg, Some(ns), &desired).map(|_| ()),
        r => r?,
    };
    let changed = change_as(&mut cur, &format!("{} {ns}/{name}", K::KIND), |o: &mut K| {
        let before = o.clone();
        let (m, want) = (o.metadata_mut(), desired.metadata());
        m.labels = want.labels.clone();
        if want.owner_references.is_some() {
            m.owner_references = want.owner_references.clone();
        }
        content(o, &desired);
        *o != before
    })?;
    if changed {
        reg.update(rt(K::KIND), Some(ns), &name, cur, Part::Main, &WriteOptions::default())?;
    }
    Ok(())
}

fn pod_ref(ns: &str, p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        ..Default::default()
    }
}

fn pod_ip(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty())
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    for svc in list_typed::<Service>(reg)? {
        let spec = svc.spec.as_ref();
        let Some(selector) = spec.and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
            continue;
        };
        if is_deleting(&svc.metadata) {
            continue;
        }
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default").to_string();
        let mut members: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && !is_deleting(&p.metadata))
            .filter(|p| selector.iter().all(|(k, v)| labels(&p.metadata).get(k) == Some(v)))
            .filter(|p| pod_ip(p).is_some())
            .collect();
        members.sort_by_key(|p| name(&p.metadata).to_string());
        let address = |p: &Pod| EndpointAddress {
            ip: pod_ip(p).unwrap_or_default().to_string(),
            target_ref: Some(pod_ref(&ns, p)),
            node_name: node_name(p).map(str::to_string),
            hostname: None,
        };
        let ready: Vec<EndpointAddress> = members.iter().filter(|p| pod_ready(p)).map(|p| address(p)).collect();
        let not_ready: Vec<EndpointAddress> = members.iter().filter(|p| !pod_ready(p)).map(|p| address(p)).collect();
        let ep_ports: Vec<EndpointPort> = spec
            .and_then(|s| s.ports.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|p| EndpointPort {
                port: target_port(p, members.first().copied()),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                name: p.name.clone(),
                app_protocol: None,
            })
            .collect();
        let subset = EndpointSubset {
            ports: Some(ep_ports.clone()),
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
        };
        let svc_name = name(&svc.metadata).to_string();
        let endpoints = Endpoints {
            metadata: ObjectMeta {
                name: Some(svc_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(svc.metadata.labels.clone().unwrap_or_default()),
                ..Default::default()
            },
            subsets: Some(if members.is_empty() { vec![] } else { vec![subset] }),
        };
        upsert(reg, &ns, endpoints, |o: &mut Endpoints, want| o.subsets = want.subsets.clone())?;

        let slice_endpoints: Vec<discovery::Endpoint> = members
            .iter()
            .map(|p| {
                let r = pod_ready(p);
                discovery::Endpoint {
                    addresses: vec![pod_ip(p).unwrap_or_default().to_string()],
                    conditions: Some(discovery::EndpointConditions {
                        ready: Some(r),
                        serving: Some(r),
                        terminating: Some(false),
                    }),
                    node_name: node_name(p).map(str::to_string),
                    target_ref: Some(pod_ref(&ns, p)),
                    ..Default::default()
                }
            })
            .collect();
        // kubectl describe dereferences every slice port's name: always set it.
        let slice_ports: Vec<discovery::EndpointPort> = ep_ports
            .into_iter()
            .map(|p| discovery::EndpointPort {
                name: Some(p.name.unwrap_or_default()),
                port: Some(p.port),
                protocol: p.protocol,
                app_protocol: None,
            })
            .collect();
        let slice_labels = [
            ("kubernetes.io/service-name", svc_name.as_str()),
            ("endpointslice.kubernetes.io/managed-by", "endpointslice-controller.k8s.io"),
        ];
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc_name}-{}", &uid(&svc.metadata)[..5])),
                namespace: Some(ns.clone()),
                labels: Some(slice_labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                owner_references: Some(vec![controller_ref(&svc)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: slice_endpoints,
            ports: Some(slice_ports),
        };
        upsert(reg, &ns, slice, |o: &mut EndpointSlice, want| {
            o.address_type = want.address_type.clone();
            o.endpoints = want.endpoints.clone();
            o.ports = want.ports.clone();
        })?;
    }
    Ok(())
}
