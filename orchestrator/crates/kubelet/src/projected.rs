//! Projected volumes: configMap, secret, downwardAPI and
//! serviceAccountToken sources written together into one directory (with
//! the same item selection and checks as the single-source volumes).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{KeyToPath, Pod, ProjectedVolumeSource};

use orchestrator_apimachinery::node_fields;

use crate::pod::{ConfigError, Lookup, field_ref};

/// `data` narrowed to `items` (key → path) when given.
pub fn items(items: Option<&[KeyToPath]>, data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    match items {
        Some(items) => items.iter().filter_map(|i| Some((i.path.clone(), data.get(&i.key)?.clone()))).collect(),
        None => data,
    }
}

/// The files of a projected volume `volume` of `pod`, each path checked to stay inside it.
pub fn files(
    pod: &Pod,
    volume: &str,
    p: &ProjectedVolumeSource,
    lookup: &dyn Lookup,
) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let ns = crate::pod::ids(pod).0;
    let mut out = BTreeMap::new();
    for s in p.sources.iter().flatten() {
        let objects = [
            s.config_map.as_ref().map(|c| ("ConfigMap", c.name.as_str(), c.items.as_deref(), c.optional)),
            s.secret.as_ref().map(|c| ("Secret", c.name.as_str(), c.items.as_deref(), c.optional)),
        ];
        for (kind, name, wanted, optional) in objects.into_iter().flatten() {
            match lookup.data(kind, ns, name) {
                Some(data) => out.extend(items(wanted, data)),
                None if optional.unwrap_or(false) => {}
                None => return Err(ConfigError(format!("{} {name:?} not found", kind.to_lowercase()))),
            }
        }
        for i in s.downward_api.iter().flat_map(|d| d.items.iter().flatten()) {
            match &i.field_ref {
                Some(f) => {
                    out.insert(i.path.clone(), field_ref(pod, &f.field_path)?.into_bytes());
                }
                None => {
                    return Err(ConfigError(format!(
                        "volume {volume:?}: downwardAPI item {:?}: only fieldRef is supported",
                        i.path
                    )));
                }
            }
        }
        if let Some(t) = &s.service_account_token {
            let audience = t.audience.as_deref().unwrap_or_default();
            let seconds = t.expiration_seconds.unwrap_or(3600);
            let token = lookup.token(audience, seconds).ok_or_else(|| {
                ConfigError(format!("volume {volume:?}: no ServiceAccount token for audience {audience:?} yet"))
            })?;
            out.insert(t.path.clone(), token.into_bytes());
        }
    }
    for f in out.keys() {
        node_fields::volume_path(f).map_err(|e| ConfigError(format!("volume {volume:?}: file {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::object_data;
    use serde_json::json;

    struct Objects;
    impl Lookup for Objects {
        fn data(&self, kind: &str, _: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            match (kind, name) {
                ("ConfigMap", "cm") => Some(object_data(kind, &json!({"data": {"a": "1", "b": "2"}}))),
                ("Secret", "s") => Some(object_data(kind, &json!({"data": {"pw": "aHVudGVyMg=="}}))),
                _ => None,
            }
        }
        fn token(&self, audience: &str, seconds: i64) -> Option<String> {
            Some(format!("token-for-{audience}-{seconds}"))
        }
    }

    #[test]
    fn all_four_sources_together() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"}})).unwrap();
        let p: ProjectedVolumeSource = serde_json::from_value(json!({"sources": [
            {"configMap": {"name": "cm", "items": [{"key": "b", "path": "conf/b"}]}},
            {"secret": {"name": "s"}},
            {"secret": {"name": "missing", "optional": true}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            {"serviceAccountToken": {"path": "token", "audience": "vault", "expirationSeconds": 600}}]}))
        .unwrap();
        let f = files(&pod, "all", &p, &Objects).unwrap();
        let text: BTreeMap<&str, String> =
            f.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned())).collect();
        assert_eq!(
            text,
            BTreeMap::from([
                ("conf/b", "2".to_string()),
                ("pw", "hunter2".into()),
                ("ns", "d".into()),
                ("token", "token-for-vault-600".into())
            ])
        );
        let missing: ProjectedVolumeSource =
            serde_json::from_value(json!({"sources": [{"configMap": {"name": "nope"}}]})).unwrap();
        assert_eq!(files(&pod, "v", &missing, &Objects).unwrap_err().0, "configmap \"nope\" not found");
        let escape: ProjectedVolumeSource =
            serde_json::from_value(json!({"sources": [{"serviceAccountToken": {"path": "../../token"}}]})).unwrap();
        assert!(files(&pod, "v", &escape, &Objects).is_err());
    }
}
