//! `osctl kubeconfig` over several control planes: a kubeconfig names one
//! server per cluster and kubectl does not fail over, so each control
//! plane gets its own cluster entry and context (`kubectl --context
//! admin@cp2` when the current one is down), the first node's current.
//! Upstream users put a virtual IP or a load balancer in front instead;
//! `--server` writes that one address.

/// The value of the first `key:` line of a kubeconfig.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

/// One kubeconfig from each control plane's (`host`, `https://host:6443`,
/// its admin kubeconfig): clusters `plinth-<host>`, users `admin-<host>`,
/// contexts `admin@<host>`.
pub fn per_control_plane(each: &[(String, String, String)]) -> Result<String, String> {
    let (mut clusters, mut users, mut contexts) = (String::new(), String::new(), String::new());
    for (host, url, text) in each {
        let get = |key: &str| field(text, key).ok_or_else(|| format!("{host}: its kubeconfig has no {key}"));
        let ca = get("certificate-authority-data")?;
        let (cert, key) = (get("client-certificate-data")?, get("client-key-data")?);
        clusters.push_str(&format!(
            "- name: plinth-{host}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n"
        ));
        users.push_str(&format!(
            "- name: admin-{host}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n"
        ));
        contexts.push_str(&format!(
            "- name: admin@{host}\n  context:\n    cluster: plinth-{host}\n    user: admin-{host}\n    namespace: default\n"
        ));
    }
    let first = &each.first().ok_or("no control plane answered")?.0;
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n{users}contexts:\n{contexts}current-context: admin@{first}\npreferences: {{}}\n"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_control_plane_gets_a_context_and_the_first_is_current() {
        let kc = |n: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: plinth\n  cluster:\n    server: https://0.0.0.0:6443\n    certificate-authority-data: CA\n\
                 users:\n- name: admin\n  user:\n    client-certificate-data: CERT{n}\n    client-key-data: KEY{n}\n"
            )
        };
        let each = [
            ("10.0.0.1".to_string(), "https://10.0.0.1:6443".to_string(), kc("1")),
            ("10.0.0.2".to_string(), "https://10.0.0.2:6443".to_string(), kc("2")),
        ];
        let out = super::per_control_plane(&each).unwrap();
        assert!(out.contains("- name: plinth-10.0.0.2\n  cluster:\n    server: https://10.0.0.2:6443\n    certificate-authority-data: CA\n"), "{out}");
        assert!(out.contains("client-certificate-data: CERT2\n    client-key-data: KEY2\n"), "{out}");
        assert!(
            out.contains(
                "- name: admin@10.0.0.1\n  context:\n    cluster: plinth-10.0.0.1\n    user: admin-10.0.0.1\n"
            ),
            "{out}"
        );
        assert!(out.contains("current-context: admin@10.0.0.1\n"), "{out}");
        let bad = [("cp".to_string(), "https://cp:6443".to_string(), "apiVersion: v1\n".to_string())];
        assert_eq!(super::per_control_plane(&bad).unwrap_err(), "cp: its kubeconfig has no certificate-authority-data");
    }
}
