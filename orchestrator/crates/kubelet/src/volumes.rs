//! Pod volumes on the node: emptyDir (disk or tmpfs), hostPath, configMap,
//! secret, downwardAPI and projected (`projected`; files written atomically
//! and rewritten when the object or the token changes), under `<kubelet-dir>/pods/<uid>/volumes/<name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use orchestrator_apimachinery::node_fields;
use orchestrator_apimachinery::validation::is_dns1123_label;

use crate::cri::v1;
use crate::pod::{ConfigError, Lookup, field_ref};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("mount tmpfs on {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io { op, path: path.to_path_buf(), source }
}

/// The directory of a pod's volumes.
pub fn pod_volumes_dir(kubelet_dir: &Path, uid: &str) -> PathBuf {
    kubelet_dir.join("pods").join(uid).join("volumes")
}

/// Writes `files` into `dir` so that the set changes at once: a new
/// timestamped directory, then the `..data` symlink swapped (as upstream's
/// AtomicWriter), with per-key symlinks through `..data`.
fn write_atomic(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(&current);
        let same = files.iter().all(|(k, v)| std::fs::read(cur.join(k)).is_ok_and(|b| b == *v))
            && std::fs::read_dir(&cur).map(|d| d.count()).unwrap_or(0) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!("..{}", time::OffsetDateTime::now_utc().unix_timestamp_nanos());
    let new = dir.join(&stamp);
    std::fs::create_dir_all(&new).map_err(io("create", &new))?;
    for (k, v) in files {
        let f = new.join(k);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        std::fs::write(&f, v).map_err(io("write", &f))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &f))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io("symlink", &tmp))?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp, &data_link).map_err(io("rename", &data_link))?;
    for k in files.keys() {
        let top = k.split('/').next().unwrap_or(k);
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link).map_err(io("symlink", &link))?;
        }
    }
    if let Some(old) = old.filter(|o| *o != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// A volume file name (a key, an item's path) that stays inside the volume.
fn file_name(volume: &str, name: &str) -> Result<(), ConfigError> {
    node_fields::volume_path(name).map_err(|e| ConfigError(format!("volume {volume:?}: file {e}")))
}

/// Prepares (or refreshes) every volume of a pod; returns the host path of each by name.
/// Names and file paths are checked again here (as at admission), so an
/// object stored some other way still writes nothing outside the pod's volume directory.
pub fn prepare(kubelet_dir: &Path, pod: &Pod, lookup: &dyn Lookup) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let (ns, _, uid) = crate::pod::ids(pod);
    let base = pod_volumes_dir(kubelet_dir, uid);
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let name = v.name.as_str();
        if !is_dns1123_label(name) {
            return Err(ConfigError(format!("volume name {name:?} is not a DNS label")).into());
        }
        let dir = base.join(name);
        let mode = |m: Option<i32>| m.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644);
        if let Some(e) = &v.empty_dir {
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                if e.medium.as_deref() == Some("Memory") {
                    let size = e.size_limit.as_ref().map(|q| crate::pod::parse_bytes(&q.0));
                    let opts = match size.transpose()? {
                        Some(b) => format!("mode=0777,size={b}"),
                        None => "mode=0777".to_string(),
                    };
                    nix::mount::mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        nix::mount::MsFlags::empty(),
                        Some(opts.as_str()),
                    )
                    .map_err(|source| VolumeError::Mount { path: dir.clone(), source })?;
                } else {
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                        .map_err(io("chmod", &dir))?;
                }
            }
            out.insert(name.to_string(), dir);
        } else if let Some(h) = &v.host_path {
            let path = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or_default() {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io("create", &path))?,
                "FileOrCreate" if !path.exists() => {
                    std::fs::write(&path, b"").map_err(io("create", &path))?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath type check failed: {} is not a directory",
                        path.display()
                    ))
                    .into());
                }
                "File" if !path.is_file() => {
                    return Err(
                        ConfigError(format!("hostPath type check failed: {} is not a file", path.display())).into()
                    );
                }
                _ => {}
            }
            out.insert(name.to_string(), path);
        } else if let Some((kind, obj, items, optional, default_mode)) = v
            .config_map
            .as_ref()
            .map(|c| ("ConfigMap", c.name.as_str(), c.items.as_deref(), c.optional, c.default_mode))
            .or_else(|| {
                v.secret.as_ref().map(|s| {
                    (
                        "Secret",
                        s.secret_name.as_deref().unwrap_or_default(),
                        s.items.as_deref(),
                        s.optional,
                        s.default_mode,
                    )
                })
            })
        {
            let data = match lookup.data(kind, ns, obj) {
                Some(d) => d,
                None if optional.unwrap_or(false) => BTreeMap::new(),
                None => {
                    return Err(ConfigError(format!("{} {obj:?} not found", kind.to_lowercase())).into());
                }
            };
            let files = crate::projected::items(items, data);
            for f in files.keys() {
                file_name(name, f)?;
            }
            write_atomic(&dir, &files, mode(default_mode))?;
            out.insert(name.to_string(), dir);
        } else if v.persistent_volume_claim.is_some() {
            // Resolved through its PersistentVolume by `crate::claims`.
            continue;
        } else if let Some(d) = &v.downward_api {
            let mut files = BTreeMap::new();
            for i in d.items.iter().flatten() {
                if let Some(f) = &i.field_ref {
                    // The downward API names a field by its path: a string by design.
                    file_name(name, &i.path)?;
                    files.insert(i.path.clone(), field_ref(pod, &f.field_path)?.into_bytes());
                }
            }
            write_atomic(&dir, &files, mode(d.default_mode))?;
            out.insert(name.to_string(), dir);
        } else if let Some(p) = &v.projected {
            let files = crate::projected::files(pod, name, p, lookup)?;
            write_atomic(&dir, &files, mode(p.default_mode))?;
            out.insert(name.to_string(), dir);
        } else {
            return Err(ConfigError(format!("volume {name:?}: this kind of volume is not supported")).into());
        }
    }
    Ok(out)
}

/// The CRI mounts of a container's `volumeMounts`.
pub fn mounts(container: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Vec<v1::Mount>, ConfigError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let name = &m.name;
        let host = volumes.get(name).ok_or_else(|| ConfigError(format!("unable to find volume {name:?}")))?;
        let sub = m.sub_path.as_deref().unwrap_or_default();
        let host_path = if sub.is_empty() {
            host.clone()
        } else {
            node_fields::volume_path(sub).map_err(|e| ConfigError(format!("subPath: {e}")))?;
            host.join(sub)
        };
        out.push(v1::Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Removes a pod's volumes (unmounting memory-backed emptyDirs first). hostPath volumes are not touched.
pub fn remove(kubelet_dir: &Path, uid: &str) -> Result<(), VolumeError> {
    let base = pod_volumes_dir(kubelet_dir, uid);
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            // Memory emptyDirs are tmpfs mounts: a failing unmount means "not a mount point".
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let pod_dir = kubelet_dir.join("pods").join(uid);
    match std::fs::remove_dir_all(&pod_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(VolumeError::Io { op: "remove", path: pod_dir, source: e })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::object_data;
    use serde_json::{Value, json};

    struct One(Value);
    impl Lookup for One {
        fn data(&self, kind: &str, _: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "cm").then(|| object_data(kind, &self.0))
        }
    }

    /// Stored objects whose item paths, keys or volume names lead out of
    /// the volume are refused before anything is written.
    #[test]
    fn paths_out_of_the_volume_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let pod = |volume: Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"uid": "u", "namespace": "d"}, "spec": {"volumes": [volume]}}))
                .unwrap()
        };
        let cases = [
            (
                json!({"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "../../etc/x"}]}}),
                json!({"data": {"k": "pwned"}}),
            ),
            (
                json!({"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "../../../../../etc/x"}]}}),
                json!({"data": {"k": "pwned"}}),
            ),
            (json!({"name": "c", "configMap": {"name": "cm"}}), json!({"data": {"..": "pwned"}})),
            (json!({"name": "..", "configMap": {"name": "cm"}}), json!({"data": {"x": "pwned"}})),
            (
                json!({"name": "c", "downwardAPI": {"items": [{"path": "/etc/x", "fieldRef": {"fieldPath": "metadata.name"}}]}}),
                json!({}),
            ),
        ];
        for (volume, data) in cases {
            let e = prepare(dir.path(), &pod(volume.clone()), &One(data)).unwrap_err();
            assert!(matches!(e, VolumeError::Config(_)), "{volume}: {e}");
        }
        let written: Vec<String> = walk(dir.path());
        assert!(written.iter().all(|f| !f.ends_with("/x") && !f.contains("pwned")), "{written:?}");
        assert!(!dir.path().join("etc").exists() && !dir.path().join("pods/u/volumes/etc").exists());
    }

    fn walk(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() { walk(&p) } else { vec![p.display().to_string()] }
            })
            .collect()
    }

    #[test]
    fn config_map_volumes_are_written_and_updated_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"uid": "u", "namespace": "d", "name": "p", "labels": {"a": "b"}}, "spec": {"volumes": [
            {"name": "cfg", "configMap": {"name": "cm"}},
            {"name": "some", "configMap": {"name": "cm", "items": [{"key": "k2", "path": "sub/two"}]}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "scratch", "emptyDir": {}},
        ]}}))
        .unwrap();
        let v = prepare(dir.path(), &pod, &One(json!({"data": {"k1": "v1", "k2": "v2"}}))).unwrap();
        assert_eq!(std::fs::read_to_string(v["cfg"].join("k1")).unwrap(), "v1");
        assert_eq!(std::fs::read_to_string(v["some"].join("sub/two")).unwrap(), "v2");
        assert!(!v["some"].join("k1").exists());
        assert_eq!(std::fs::read_to_string(v["info"].join("labels")).unwrap(), "a=\"b\"");
        assert!(v["scratch"].is_dir());
        prepare(dir.path(), &pod, &One(json!({"data": {"k1": "new", "k2": "v2"}}))).unwrap();
        assert_eq!(std::fs::read_to_string(v["cfg"].join("k1")).unwrap(), "new");
        let stamps = std::fs::read_dir(&v["cfg"])
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(stamps, 1, "the old generation is removed");
        let container = |c: Value| -> Container { serde_json::from_value(c).unwrap() };
        let c = container(
            json!({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}, {"name": "scratch", "mountPath": "/s", "subPath": "x"}]}),
        );
        let m = mounts(&c, &v).unwrap();
        assert!(m[0].readonly && m[1].host_path.ends_with("scratch/x"));
        assert!(
            mounts(
                &container(json!({"volumeMounts": [{"name": "cfg", "mountPath": "/x", "subPath": "../../etc"}]})),
                &v
            )
            .is_err()
        );
        let missing: Pod = serde_json::from_value(json!({"metadata": {"uid": "u2", "namespace": "d"}, "spec": {"volumes": [{"name": "x", "configMap": {"name": "nope"}}]}}))
            .unwrap();
        assert!(prepare(dir.path(), &missing, &One(json!({}))).is_err());
        remove(dir.path(), "u").unwrap();
        assert!(!dir.path().join("pods/u").exists());
    }
}
