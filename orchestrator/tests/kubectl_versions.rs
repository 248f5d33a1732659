//! apply / get / delete with every kubectl build this machine has: the
//! PyPI one (1.37, required under CI), the pinned 1.27–1.33 builds where
//! present (they need /openapi/v2 in protobuf, ≥1.28 /openapi/v3), and
//! 1.20–1.26 (reading /openapi/v2; 1.20–1.24 validate client-side against it).

mod common;

use common::{APP, Server};

#[test]
fn apply_get_delete_with_each_kubectl() {
    let Some(mut builds) = common::kubectl_builds(27..=33) else { return };
    builds.extend(common::old_kubectls().unwrap_or_default());
    for kubectl in builds {
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl.clone());
        let which = kubectl.display().to_string();
        let out = s.apply(APP, &[]);
        assert_eq!(out.matches("created").count(), 3, "{which}: {out}");
        let out = s.apply(APP, &[]);
        assert_eq!(out.matches("unchanged").count(), 3, "{which}: {out}");
        let get = s.ok(&["get", "deploy", "web"]);
        assert!(get.contains("UP-TO-DATE"), "{which}: {get}");
        let out = s.ok(&["delete", "-f", s.dir.path().join("manifest-0.yaml").to_str().unwrap()]);
        assert_eq!(out.matches("deleted").count(), 3, "{which}: {out}");
    }
}
