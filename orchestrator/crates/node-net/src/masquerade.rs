//! The masquerade of pod traffic leaving the node: one rule for the whole
//! pod CIDR instead of the CNI bridge plugin's `ipMasq`, which runs nine
//! `iptables` commands on every sandbox's ADD (a chain per pod, a jump per
//! pod in POSTROUTING) and six on its DEL, each reading the whole nat table
//! — on 2 cores the larger part of a burst's sandbox time.
//!
//! The rules say what `ipMasq` said per pod, for the CIDR: traffic from this
//! node's pods to anything but the pod CIDR itself and multicast is
//! masqueraded. They live in a nat chain of ours, `PLM-<id>-MASQ` (outside
//! the proxy's `PL-<id>-` chains, so a proxy sync leaves it alone),
//! jumped to from the *end* of POSTROUTING, where the plugin appended its
//! per-pod jumps: the exemption of pod-to-pod traffic across nodes
//! (`routes`) and the service proxy's marked masquerade, both inserted first,
//! still come before it.

use std::time::Duration;

use ipnet::Ipv4Net;

use crate::proxy::{Chains, ProxyError, remove_postrouting_chain, restore_text, run};

/// How often the rules are written again (repairs a flushed table).
const RESYNC: Duration = Duration::from_secs(30);

/// The jump into the masquerade chain (appended to POSTROUTING).
fn jump(chains: &Chains) -> Vec<String> {
    let chain = chains.pod_masquerade();
    let comment = format!("plinth pod masquerade ({})", chain.trim_end_matches("-MASQ"));
    ["-m", "comment", "--comment", &comment, "-j", &chain].map(str::to_string).to_vec()
}

/// The `iptables-restore --noflush` input of the masquerade chain for the pod CIDR `own`.
fn chain_input(chains: &Chains, own: Ipv4Net) -> String {
    let chain = chains.pod_masquerade();
    let rules = format!(
        "-A {chain} -d {own} -m comment --comment \"pod to pod on this node\" -j RETURN\n\
         -A {chain} -d 224.0.0.0/4 -m comment --comment \"multicast\" -j RETURN\n\
         -A {chain} -s {own} -m comment --comment \"pods leaving the node\" -j MASQUERADE\n"
    );
    restore_text([chain.clone()].iter(), &rules, &[])
}

/// Writes the chain for `own` (declared, so flushed and refilled in one
/// transaction) and appends the jump into it unless it is there.
pub async fn ensure(chains: &Chains, own: Ipv4Net) -> Result<(), ProxyError> {
    run("iptables-restore", &["-w", "--noflush"], Some(&chain_input(chains, own))).await?;
    let rule = jump(chains);
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    if run("iptables", &[&["-w", "-t", "nat", "-C", "POSTROUTING"][..], &rule].concat(), None).await.is_err() {
        run("iptables", &[&["-w", "-t", "nat", "-A", "POSTROUTING"][..], &rule].concat(), None).await?;
    }
    Ok(())
}

/// Writes the rules again every [`RESYNC`], for ever (the first write is
/// the caller's [`ensure`]); a failure is logged and retried.
pub async fn run_forever(chains: Chains, own: Ipv4Net) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = ensure(&chains, own).await {
            tracing::warn!("pod masquerade for {own}: {e}");
        }
    }
}

/// Removes the jump and the chain (a node taken down, a test torn down).
pub async fn cleanup(chains: &Chains) -> Result<(), ProxyError> {
    remove_postrouting_chain(&jump(chains), &chains.pod_masquerade()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_pod_cidr_is_masqueraded_except_toward_itself_and_multicast() {
        let chains = Chains::new("plinth0");
        let input = chain_input(&chains, "10.244.1.0/24".parse().unwrap());
        let chain = chains.pod_masquerade();
        assert!(!chain.starts_with("PL-") && chain.len() <= 28, "outside the proxy's chains, a valid name: {chain}");
        assert_ne!(chain, chains.pod_network());
        let rules: Vec<&str> = input.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules.len(), 3, "{input}");
        assert!(rules[0].starts_with(&format!("-A {chain} -d 10.244.1.0/24 ")) && rules[0].ends_with("-j RETURN"));
        assert!(rules[1].starts_with(&format!("-A {chain} -d 224.0.0.0/4 ")) && rules[1].ends_with("-j RETURN"));
        assert!(rules[2].starts_with(&format!("-A {chain} -s 10.244.1.0/24 ")) && rules[2].ends_with("-j MASQUERADE"));
        assert!(input.starts_with(&format!("*nat\n:{chain} - [0:0]\n")) && input.ends_with("COMMIT\n"), "{input}");
        assert_eq!(jump(&chains).last(), Some(&chain));
    }

    /// The real thing, in a network namespace of the test's own (root): the
    /// jump comes after the rules inserted first (the pod-network
    /// exemption's place), once however often written, and a cleanup
    /// removes it all. What the rules do to a pod's packets is proved with
    /// containerd in `tests/kubelet.rs`.
    #[test]
    #[allow(unsafe_code)]
    fn the_jump_is_appended_once_and_cleaned_up_in_a_network_namespace() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread
            // (and the processes it starts) into a new network namespace;
            // it touches no memory.
            let r = unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let chains = Chains::new("plinth-test0");
                let own: Ipv4Net = "10.244.0.0/24".parse().unwrap();
                sh("iptables", &["-t", "nat", "-I", "POSTROUTING", "1", "-s", "10.9.9.9", "-j", "ACCEPT"]);
                ensure(&chains, own).await.unwrap();
                ensure(&chains, own).await.unwrap();
                let saved = sh("iptables-save", &["-t", "nat"]);
                let post: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A POSTROUTING")).collect();
                assert_eq!(post.len(), 2, "one jump, however often written: {saved}");
                assert!(post[0].contains("10.9.9.9"), "rules inserted first stay first: {saved}");
                assert!(post[1].ends_with(&format!("-j {}", chains.pod_masquerade())), "{saved}");
                let masq = format!("-A {} -s {own}", chains.pod_masquerade());
                assert_eq!(saved.lines().filter(|l| l.starts_with(&masq)).count(), 1, "{saved}");

                cleanup(&chains).await.unwrap();
                let saved = sh("iptables-save", &["-t", "nat"]);
                assert!(!saved.contains(&chains.pod_masquerade()), "{saved}");
                cleanup(&chains).await.unwrap();
            });
        })
        .join()
        .unwrap();
    }
}
