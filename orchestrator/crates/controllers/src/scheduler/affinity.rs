//! Affinity, as upstream's NodeAffinity and InterPodAffinity plugins: the
//! pod's required node affinity filters and its preferred terms score;
//! required pod affinity and anti-affinity (the pod's own, and existing
//! pods' anti-affinity against it) filter, preferred terms (both ways)
//! score, each over any topology key.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm};
use orchestrator_apimachinery::selector::{LabelSelector, Requirement};

use super::{Cluster, labels, namespace};

pub(super) const AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub(super) const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub(super) const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// What an existing pod's required affinity term weighs in the score
/// (upstream's hardPodAffinityWeight default).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Whether one node selector requirement holds for a label (or field) value.
fn holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (value.and_then(number), values.first().and_then(|x| number(x))) {
            (Some(v), Some(bound)) if r.operator == "Gt" => v > bound,
            (Some(v), Some(bound)) => v < bound,
            _ => false,
        },
        _ => false,
    }
}

/// Whether a node selector term matches a node: each expression on its
/// labels and each field (`metadata.name`) holds; an empty term matches nothing.
fn term_matches(t: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    let labels = node.metadata.labels.as_ref();
    (!exprs.is_empty() || !fields.is_empty())
        && exprs.iter().all(|r| holds(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && holds(r, node.metadata.name.as_deref()))
}

/// Whether the node carries the pod's nodeSelector and matches one of the
/// terms of its required node affinity.
pub(crate) fn node_matches(pod: &Pod, node: &Node) -> bool {
    let spec = pod.spec.as_ref();
    let node_affinity = spec.and_then(|s| s.affinity.as_ref()).and_then(|a| a.node_affinity.as_ref());
    let required = node_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    super::selected(spec.and_then(|s| s.node_selector.as_ref()), node)
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// The summed weights of the pod's preferred node affinity terms that the node matches.
pub(super) fn node_preference(pod: &Pod, node: &Node) -> i64 {
    let spec = pod.spec.as_ref();
    let node_affinity = spec.and_then(|s| s.affinity.as_ref()).and_then(|a| a.node_affinity.as_ref());
    let preferred = node_affinity.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref());
    preferred
        .unwrap_or_default()
        .iter()
        .filter(|t| term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// The namespaces a pod affinity term looks in.
enum Namespaces {
    All,
    Listed(BTreeSet<String>),
}

/// A pod affinity term resolved for the pod that carries it.
struct Term<'a> {
    /// None matches no pod (a term without a labelSelector).
    selector: Option<LabelSelector>,
    namespaces: Namespaces,
    key: &'a str,
    weight: i64,
}

impl<'a> Term<'a> {
    fn new(term: &'a PodAffinityTerm, weight: i64, owner: &Pod, cluster: &Cluster) -> Term<'a> {
        let own = labels(owner);
        let selector = term.label_selector.as_ref().map(|s| {
            let mut sel = LabelSelector::from_typed(s);
            for k in term.match_label_keys.iter().flatten() {
                if let Some(v) = own.get(k) {
                    sel.0.push(Requirement::In(k.clone(), vec![v.clone()]));
                }
            }
            for k in term.mismatch_label_keys.iter().flatten() {
                if let Some(v) = own.get(k) {
                    sel.0.push(Requirement::NotIn(k.clone(), vec![v.clone()]));
                }
            }
            sel
        });
        let mut listed: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let namespaces = match &term.namespace_selector {
            Some(s) => {
                let sel = LabelSelector::from_typed(s);
                if sel.is_empty() {
                    Namespaces::All
                } else {
                    listed.extend(cluster.namespaces.iter().filter(|(_, l)| sel.matches(l)).map(|(n, _)| n.clone()));
                    Namespaces::Listed(listed)
                }
            }
            None if listed.is_empty() => Namespaces::Listed(BTreeSet::from([namespace(owner).to_string()])),
            None => Namespaces::Listed(listed),
        };
        Term { selector, namespaces, key: &term.topology_key, weight }
    }

    fn matches(&self, pod: &Pod) -> bool {
        let in_namespace = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Listed(l) => l.contains(namespace(pod)),
        };
        in_namespace && self.selector.as_ref().is_some_and(|s| s.matches(labels(pod)))
    }
}

/// A pod's pod affinity and anti-affinity terms.
#[derive(Default)]
struct Terms<'a> {
    affinity: Vec<Term<'a>>,
    anti: Vec<Term<'a>>,
    /// Preferred terms: weights positive for affinity, negative for anti-affinity.
    preferred: Vec<Term<'a>>,
}

impl<'a> Terms<'a> {
    fn of(pod: &'a Pod, cluster: &Cluster) -> Terms<'a> {
        let Some(a) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else { return Terms::default() };
        let mut t = Terms::default();
        if let Some(pa) = &a.pod_affinity {
            let required = pa.required_during_scheduling_ignored_during_execution.iter().flatten();
            t.affinity = required.map(|r| Term::new(r, HARD_POD_AFFINITY_WEIGHT, pod, cluster)).collect();
            for w in pa.preferred_during_scheduling_ignored_during_execution.iter().flatten() {
                t.preferred.push(Term::new(&w.pod_affinity_term, i64::from(w.weight), pod, cluster));
            }
        }
        if let Some(pa) = &a.pod_anti_affinity {
            let required = pa.required_during_scheduling_ignored_during_execution.iter().flatten();
            t.anti = required.map(|r| Term::new(r, 0, pod, cluster)).collect();
            for w in pa.preferred_during_scheduling_ignored_during_execution.iter().flatten() {
                t.preferred.push(Term::new(&w.pod_affinity_term, -i64::from(w.weight), pod, cluster));
            }
        }
        t
    }
}

type Domain = (String, String);

/// Inter-pod affinity for one pod, counted once over the pods already placed.
pub(super) struct InterPod<'a> {
    terms: Terms<'a>,
    /// Placed pods matching all the pod's required affinity terms, per domain of each term.
    affinity: HashMap<Domain, usize>,
    /// Whether the pod matches all its own required affinity terms.
    self_match: bool,
    /// Placed pods matching a required anti-affinity term, per domain of the term.
    anti: HashMap<Domain, usize>,
    /// Domains of placed pods whose required anti-affinity matches this pod.
    existing_anti: HashMap<Domain, usize>,
    /// Preferred-term weights (both ways) per domain.
    preference: HashMap<Domain, i64>,
}

impl<'a> InterPod<'a> {
    pub(super) fn new(pod: &'a Pod, cluster: &Cluster) -> InterPod<'a> {
        let terms = Terms::of(pod, cluster);
        let self_match = terms.affinity.iter().all(|t| t.matches(pod));
        let mut ip = InterPod {
            terms,
            affinity: HashMap::new(),
            self_match,
            anti: HashMap::new(),
            existing_anti: HashMap::new(),
            preference: HashMap::new(),
        };
        for (node, other) in cluster.placed() {
            let domain = |key: &str| Some((key.to_string(), node.metadata.labels.as_ref()?.get(key)?.clone()));
            let t = &ip.terms;
            if !t.affinity.is_empty() && t.affinity.iter().all(|t| t.matches(other)) {
                for d in t.affinity.iter().filter_map(|t| domain(t.key)) {
                    *ip.affinity.entry(d).or_default() += 1;
                }
            }
            for d in t.anti.iter().filter(|t| t.matches(other)).filter_map(|t| domain(t.key)) {
                *ip.anti.entry(d).or_default() += 1;
            }
            for term in t.preferred.iter().filter(|t| t.matches(other)) {
                if let Some(d) = domain(term.key) {
                    *ip.preference.entry(d).or_default() += term.weight;
                }
            }
            if other.spec.as_ref().is_none_or(|s| s.affinity.is_none()) {
                continue;
            }
            let theirs = Terms::of(other, cluster);
            for d in theirs.anti.iter().filter(|t| t.matches(pod)).filter_map(|t| domain(t.key)) {
                *ip.existing_anti.entry(d).or_default() += 1;
            }
            for term in theirs.affinity.iter().chain(&theirs.preferred).filter(|t| t.matches(pod)) {
                if let Some(d) = domain(term.key) {
                    *ip.preference.entry(d).or_default() += term.weight;
                }
            }
        }
        ip
    }

    /// Why the node cannot take the pod, if it cannot.
    pub(super) fn filter(&self, node: &Node) -> Result<(), &'static str> {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let count = |map: &HashMap<Domain, usize>, key: &str, value: &str| {
            map.get(&(key.to_string(), value.to_string())).copied().unwrap_or(0)
        };
        let mut all_there = true;
        for t in &self.terms.affinity {
            match labels.get(t.key) {
                None => return Err(AFFINITY),
                Some(v) => all_there &= count(&self.affinity, t.key, v) > 0,
            }
        }
        // The first pod of a group with affinity to itself goes anywhere.
        if !(all_there || self.affinity.is_empty() && self.self_match) {
            return Err(AFFINITY);
        }
        if self.terms.anti.iter().any(|t| labels.get(t.key).is_some_and(|v| count(&self.anti, t.key, v) > 0)) {
            return Err(ANTI_AFFINITY);
        }
        if self.existing_anti.iter().any(|((k, v), n)| *n > 0 && labels.get(k) == Some(v)) {
            return Err(EXISTING_ANTI_AFFINITY);
        }
        Ok(())
    }

    /// The preferred-term weights of the domains the node is in (normalized by the caller).
    pub(super) fn score(&self, node: &Node) -> i64 {
        let labels = node.metadata.labels.as_ref();
        let in_domain = |(k, v): &Domain| labels.and_then(|l| l.get(k)) == Some(v);
        self.preference.iter().filter(|(d, _)| in_domain(d)).map(|(_, w)| w).sum()
    }
}

/// Namespace labels by name, for namespaceSelectors.
pub(super) type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;
