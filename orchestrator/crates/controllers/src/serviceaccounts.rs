//! Every active namespace has a `default` ServiceAccount (pods default to it).

use serde_json::json;

use crate::{is_deleting, list_all, rt};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Registry, WriteOptions, name_of};

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    for ns in list_all(reg, "Namespace")? {
        if is_deleting(&ns) {
            continue;
        }
        let name = name_of(&ns);
        match reg.get(rt("ServiceAccount"), Some(name), "default") {
            Err(e) if e.code == 404 => {
                let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
                match reg.create(rt("ServiceAccount"), Some(name), sa, &WriteOptions::default()) {
                    Err(e) if e.code != 409 && e.code != 403 => return Err(e),
                    _ => {}
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Ok(())
}
