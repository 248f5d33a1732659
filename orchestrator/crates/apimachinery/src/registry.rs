//! Kubernetes object semantics over the revisioned [`Store`]: create with
//! generateName/uid/timestamps/defaults/validation, get, list with
//! selectors and pages, update with resourceVersion conflicts and status
//! subresources, delete with finalizers, grace periods and propagation, and
//! watch. No HTTP here: the API server and the controllers both call it.

use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::errors::{ApiError, success};
use crate::resources::{CustomVersion, ResourceType, Served, by_kind};
use crate::selector::{FieldSelector, LabelSelector};
use crate::{crd, events, schema, stateful, validation};
use orchestrator_store::{EventKind, Store, StoreError, Watch};

/// What `fieldValidation` asks for unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
    pub field_manager: Option<String>,
    /// A subresource's write of the object's main part (a pod's binding or
    /// ephemeral containers): the subresource checks what it changes, and
    /// the rule for updates of the whole object (a pod's fixed spec) does
    /// not apply.
    pub subresource: bool,
}

/// Which part of an object an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
    /// A revision to read at (`resourceVersionMatch=Exact`).
    pub exact_revision: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// The outcome of a write: the object and any warnings for the client.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// A new object was created (201).
    pub created: bool,
}

/// Where node ports are given out from (upstream's default range).
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

pub struct Registry {
    pub store: Arc<dyn Store>,
    /// Held while a Service's cluster IP or node ports are given out.
    service_ips: Mutex<()>,
    /// What the API server adds: pod admission (ServiceAccounts and their
    /// token volumes) and the TokenRequest issuer, so that the in-process
    /// kubelet and controllers see the same as HTTPS clients.
    hooks: std::sync::OnceLock<Hooks>,
    /// The served versions of the established CustomResourceDefinitions,
    /// rebuilt from the store after every CRD write ([`Registry::refresh_crds`]).
    custom: RwLock<Vec<Arc<ResourceType>>>,
}

/// Changes a pod about to be created (in the namespace given), or refuses it.
pub type PodAdmission = Box<dyn Fn(&Registry, &str, &mut Value) -> Result<(), ApiError> + Send + Sync>;
/// Answers `POST serviceaccounts/<name>/token` (namespace, name, body) with a TokenRequest.
pub type TokenIssuer = Box<dyn Fn(&Registry, &str, &str, &[u8]) -> Result<Value, ApiError> + Send + Sync>;

/// Admits a namespaced object about to be created (kind, namespace, object,
/// dry run) after every mutation: ResourceQuota charges it.
pub type CreateAdmission =
    Box<dyn Fn(&Registry, &ResourceType, &str, &Value, bool) -> Result<(), ApiError> + Send + Sync>;

pub struct Hooks {
    pub admit_pod: PodAdmission,
    pub admit_create: CreateAdmission,
    pub issue_token: TokenIssuer,
}

/// Now as upstream writes times: RFC 3339, seconds, UTC.
pub fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

pub fn format_time(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap_or(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Seconds since the Unix epoch of an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // A failing system random source is not recoverable for a server.
    getrandom::fill(&mut b).expect("the system random source works");
    b
}

pub fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Five characters as upstream's generateName suffix uses.
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<16>().iter().take(n).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

pub(crate) fn meta_str<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// The string at a JSON pointer, or "" (for objects read as JSON: watch
/// events and lists the node's services follow as they come).
pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub fn name_of(o: &Value) -> &str {
    meta_str(o, "name").unwrap_or_default()
}

pub fn namespace_of(o: &Value) -> Option<&str> {
    meta_str(o, "namespace")
}

/// An object's or a list's `metadata.resourceVersion`.
pub fn resource_version_of(o: &Value) -> Option<&str> {
    meta_str(o, "resourceVersion")
}

pub fn uid_of(o: &Value) -> &str {
    meta_str(o, "uid").unwrap_or_default()
}

fn finalizers_of(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn metadata(o: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !o.get("metadata").is_some_and(Value::is_object) {
        o["metadata"] = json!({});
    }
    o["metadata"].as_object_mut().expect("metadata is a map")
}

/// Bytes stored for an object: without its resourceVersion (that is the revision).
fn encode(o: &Value) -> Vec<u8> {
    let mut o = o.clone();
    metadata(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).expect("a JSON value serialises")
}

fn decode(value: &[u8], revision: i64) -> Value {
    let mut o: Value = serde_json::from_slice(value).unwrap_or_else(|_| json!({}));
    metadata(&mut o).insert("resourceVersion".into(), revision.to_string().into());
    o
}

/// Everything but metadata and status: what bumps `generation`.
fn spec_part(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |o: &Value| {
        let mut o = o.clone();
        metadata(&mut o).remove("resourceVersion");
        o
    };
    strip(a) == strip(b)
}

/// Paths present (non-null) in `input` but absent from `output`: fields
/// the type does not know.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    let t = serde_json::to_vec(&ContinueToken { rv, start: start.to_string() }).expect("serialises");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
}

fn decode_continue(token: &str) -> Result<ContinueToken, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            )
        })
}

/// One event of a watch, already filtered.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
}

/// A filtered watch over one resource type.
pub struct ObjectWatch {
    inner: Watch,
    labels: LabelSelector,
    fields: FieldSelector,
    /// The version a custom resource is read in (see [`read_as`]).
    custom: Option<(String, Arc<CustomVersion>)>,
    /// Core Events read as events.k8s.io/v1 ones.
    events_v1: bool,
}

/// A custom object as read through one served version of its CRD: every
/// version shares the objects (`conversion: None` rewrites only
/// `apiVersion`), and the version's defaults apply on read too, as
/// upstream applies them to what it reads from storage.
fn read_as(api_version: &str, c: &CustomVersion, o: &mut Value) {
    o["apiVersion"] = api_version.into();
    if let Some(s) = &c.schema {
        schema::default(s, o);
    }
}

impl ObjectWatch {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches_object(o) && self.fields.matches(o)
    }

    /// The next event that concerns this watch. An object that stops
    /// matching the selectors is reported DELETED, one that starts, ADDED.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            let e = self.inner.next().await?;
            let mut object = decode(&e.kv.value, e.kv.mod_revision);
            if let Some((v, c)) = &self.custom {
                read_as(v, c, &mut object);
            }
            if self.events_v1 {
                object = events::from_core(object);
            }
            let now = self.matches(&object);
            let before = e.prev.as_ref().map(|p| self.matches(&decode(&p.value, p.mod_revision)));
            let kind = match (e.kind, before, now) {
                (EventKind::Delete, _, true) => "DELETED",
                (EventKind::Delete, _, false) => continue,
                (EventKind::Put, None, true) | (EventKind::Put, Some(false), true) => "ADDED",
                (EventKind::Put, Some(true), true) => "MODIFIED",
                (EventKind::Put, Some(true), false) => "DELETED",
                (EventKind::Put, _, false) => continue,
            };
            return Ok(WatchEvent { kind, object });
        }
    }
}

impl Registry {
    pub fn new(store: Arc<dyn Store>) -> Registry {
        let r = Registry {
            store,
            service_ips: Mutex::new(()),
            hooks: std::sync::OnceLock::new(),
            custom: RwLock::new(Vec::new()),
        };
        if let Err(e) = r.refresh_crds() {
            tracing::warn!("reading CustomResourceDefinitions: {e}");
        }
        r
    }

    /// The resource type served at `/apis/<group>/<version>/<plural>`: a
    /// built-in kind, else a served version of an established CRD.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Served> {
        if let Some(rt) = crate::resources::find(group, version, plural) {
            return Some(Served::Builtin(rt));
        }
        let custom = self.custom.read().unwrap_or_else(|e| e.into_inner());
        custom
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
            .map(Served::Custom)
    }

    /// Every served version of every established CRD.
    pub fn custom_types(&self) -> Vec<Arc<ResourceType>> {
        self.custom.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Rebuilds the served custom types from the stored CRDs (after a CRD
    /// write here, and on a CRD watch event from another API server).
    pub fn refresh_crds(&self) -> Result<(), ApiError> {
        let rt = by_kind(crd::KIND).expect("CRDs are served");
        let types = self.list(rt, None, &ListOptions::default())?.items.iter().flat_map(crd::served_types).collect();
        *self.custom.write().unwrap_or_else(|e| e.into_inner()) = types;
        Ok(())
    }

    /// After a write of `rt`: a CRD changes what is served.
    fn after_write(&self, rt: &ResourceType) {
        if rt.custom.is_none()
            && rt.kind == crd::KIND
            && let Err(e) = self.refresh_crds()
        {
            tracing::warn!("reading CustomResourceDefinitions: {e}");
        }
    }

    /// An object as read through `rt` (a custom object: [`read_as`]).
    fn in_version(rt: &ResourceType, mut o: Value) -> Value {
        if let Some(c) = &rt.custom {
            read_as(&rt.api_version(), c, &mut o);
        }
        if events::serves(rt) {
            return events::from_core(o);
        }
        o
    }

    /// A write through events.k8s.io/v1: checked in that API's terms, then
    /// written as the core Event it is stored as (`write`), and answered
    /// in events.k8s.io/v1 again.
    fn write_event_v1(
        rt: &ResourceType,
        mut obj: Value,
        old: Option<Value>,
        write: impl FnOnce(&ResourceType, Value) -> Result<Written, ApiError>,
    ) -> Result<Written, ApiError> {
        Self::set_type_meta(rt, &mut obj)?;
        let causes = match &old {
            None => events::validate_create(&obj),
            Some(old) => events::validate_update(&events::to_core(obj.clone()), old),
        };
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, name_of(&obj), causes));
        }
        let core = by_kind("Event").expect("core Events are served");
        let mut w = write(core, events::to_core(obj))?;
        w.object = events::from_core(w.object);
        Ok(w)
    }

    /// Deleting a CRD deletes its objects, in every namespace.
    fn delete_custom_objects(&self, rt: &ResourceType, crd_object: &Value) -> Result<(), ApiError> {
        let name = name_of(crd_object);
        let (group, plural) = (str_at(crd_object, "/spec/group"), str_at(crd_object, "/spec/names/plural"));
        let prefix = crate::resources::custom_prefix(group, plural);
        let items = self.store.list(&prefix, None, 0, None).map_err(|e| ApiError::from_store(rt, name, e))?.items;
        for kv in items {
            match self.store.delete(&kv.key, None) {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(ApiError::from_store(rt, name, e)),
            }
        }
        Ok(())
    }

    /// Installs the API server's hooks (once; later calls are ignored).
    pub fn set_hooks(&self, hooks: Hooks) {
        let _ = self.hooks.set(hooks);
    }

    /// A token for a ServiceAccount (the `serviceaccounts/token` subresource).
    pub fn request_token(&self, ns: &str, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        match self.hooks.get() {
            Some(h) => (h.issue_token)(self, ns, name, body),
            None => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
        }
    }

    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let kv = self.store.get(&rt.key(ns, name)).map_err(|e| ApiError::from_store(rt, name, e))?;
        kv.map(|kv| Self::in_version(rt, decode(&kv.value, kv.mod_revision)))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, opts: &ListOptions) -> Result<ListResult, ApiError> {
        let prefix = rt.prefix(ns);
        let (mut start, mut revision) = match &opts.continue_token {
            Some(t) => {
                let t = decode_continue(t)?;
                (Some(t.start), Some(t.rv))
            }
            None => (None, opts.exact_revision),
        };
        let mut items = Vec::new();
        let page_size = if opts.limit == 0 { 0 } else { opts.limit.max(100) };
        loop {
            let page = self.store.list(&prefix, start.as_deref(), page_size, revision).map_err(|e| match e {
                StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ),
                e => ApiError::from_store(rt, "", e),
            })?;
            revision = Some(page.revision);
            for kv in &page.items {
                let o = Self::in_version(rt, decode(&kv.value, kv.mod_revision));
                if opts.labels.matches_object(&o) && opts.fields.matches(&o) {
                    items.push(o);
                    if opts.limit > 0 && items.len() == opts.limit {
                        let more = page.more || kv.key != page.items.last().map(|l| l.key.clone()).unwrap_or_default();
                        let token = more.then(|| encode_continue(page.revision, &kv.key));
                        return Ok(ListResult { items, revision: page.revision, continue_token: token });
                    }
                }
            }
            if !page.more {
                return Ok(ListResult { items, revision: page.revision, continue_token: None });
            }
            start = page.items.last().map(|kv| kv.key.clone());
        }
    }

    pub fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        from: i64,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> Result<ObjectWatch, StoreError> {
        let custom = rt.custom.clone().map(|c| (rt.api_version(), c));
        let events_v1 = events::serves(rt);
        Ok(ObjectWatch { inner: self.store.watch(&rt.prefix(ns), from)?, labels, fields, custom, events_v1 })
    }

    /// Decodes through the type, reports unknown fields, defaults and validates.
    fn admit(&self, rt: &ResourceType, obj: Value, opts: &WriteOptions) -> Result<(Value, Vec<String>), ApiError> {
        let name = name_of(&obj).to_string();
        let cannot = |e: String| crate::errors::cannot_handle(rt, e);
        // A CRD is checked before its type decodes it: a missing required
        // field is upstream's 422 with its path, not a decoding error.
        let mut obj = obj;
        if rt.custom.is_none() && rt.kind == crd::KIND {
            crd::apply_defaults(&mut obj);
            let causes = crd::validate(&obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(rt, &name, causes));
            }
        }
        let mut out = (rt.roundtrip)(obj.clone()).map_err(cannot)?;
        let schema = rt.custom.as_ref().and_then(|c| c.schema.as_ref());
        if let Some(s) = schema {
            schema::prune(s, &mut out, "", &mut Vec::new());
        }
        let mut unknown = Vec::new();
        unknown_fields(&obj, &out, "", &mut unknown);
        let mut warnings = Vec::new();
        match opts.validation {
            FieldValidation::Strict if !unknown.is_empty() => {
                let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                return Err(cannot(format!("strict decoding error: {}", list.join(", "))));
            }
            FieldValidation::Warn => warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\""))),
            _ => {}
        }
        // A custom kind may share a built-in kind's name: only built-ins
        // get the built-in rules.
        let kind = if rt.custom.is_some() { "" } else { rt.kind };
        validation::apply_defaults(kind, &mut out);
        stateful::apply_defaults(kind, &mut out);
        crate::policy::apply_defaults(kind, &mut out);
        if let Some(s) = schema {
            schema::default(s, &mut out);
        }
        let mut causes = validation::validate(kind, &out);
        causes.extend(stateful::validate(kind, &out));
        causes.extend(crate::policy::validate(kind, &out));
        causes.extend(crate::node_fields::validate(kind, &out));
        if let Some(s) = schema {
            causes.extend(schema::validate(s, &out));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, causes));
        }
        Ok((out, warnings))
    }

    fn check_namespace(&self, rt: &ResourceType, ns: Option<&str>) -> Result<(), ApiError> {
        let Some(ns) = ns.filter(|_| rt.namespaced) else { return Ok(()) };
        let nsrt = by_kind("Namespace").expect("namespaces are served");
        let n = self.get(nsrt, None, ns)?;
        if n.pointer("/metadata/deletionTimestamp").is_some() {
            let mut e = ApiError::forbidden(format!(
                "{} \"\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                crate::errors::qualified(rt)
            ));
            e.details = Some(Box::new(k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
                causes: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                    reason: Some("NamespaceTerminating".into()),
                    message: Some(format!("namespace {ns} is being terminated")),
                    field: Some("metadata.namespace".into()),
                }]),
                ..Default::default()
            }));
            return Err(e);
        }
        Ok(())
    }

    fn set_type_meta(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let api_version = rt.api_version();
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = rt.kind.into(),
            Some(k) if k == rt.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({api_version}) does not match the expected API version ({api_version}) or kind {k} does not match {}",
                    rt.kind
                )));
            }
        }
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = api_version.into(),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        Ok(())
    }

    /// The next free ClusterIP in 10.96.0.0/16 (.1 is the API server's, .10 the cluster DNS's).
    fn allocate_cluster_ip(&self) -> Result<String, ApiError> {
        let svc = by_kind("Service").expect("services are served");
        let used: std::collections::HashSet<String> = self
            .list(svc, None, &ListOptions::default())?
            .items
            .iter()
            .filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str).map(str::to_string))
            .collect();
        (2..65534u32)
            .filter(|n| *n != 10)
            .map(|n| format!("10.96.{}.{}", n / 256, n % 256))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| ApiError::internal("the service IP range 10.96.0.0/16 is full"))
    }

    /// Gives each port of a NodePort or LoadBalancer Service a node port:
    /// the one asked for if it is free, the one the port had (`current`),
    /// or the first free one in 30000–32767. A ClusterIP Service has none.
    /// Callers hold `service_ips`.
    fn assign_node_ports(&self, rt: &ResourceType, svc: &mut Value, current: Option<&Value>) -> Result<(), ApiError> {
        let wants = matches!(svc.pointer("/spec/type").and_then(Value::as_str), Some("NodePort" | "LoadBalancer"));
        let (ns, name) = (namespace_of(svc).unwrap_or_default().to_string(), name_of(svc).to_string());
        let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else { return Ok(()) };
        if !wants {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
            return Ok(());
        }
        let mut taken: std::collections::HashSet<i64> = self
            .list(rt, None, &ListOptions::default())?
            .items
            .iter()
            .filter(|o| (namespace_of(o).unwrap_or_default(), name_of(o)) != (ns.as_str(), name.as_str()))
            .flat_map(|o| o.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|p| p["nodePort"].as_i64())
            .collect();
        let old: Vec<Value> =
            current.and_then(|c| c.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
        let mut causes = Vec::new();
        for (i, p) in ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            match p["nodePort"].as_i64().filter(|n| *n != 0) {
                Some(n) if !NODE_PORTS.contains(&n) => causes.push((
                    field,
                    format!(
                        "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORTS.start(),
                        NODE_PORTS.end()
                    ),
                )),
                Some(n) if !taken.insert(n) => {
                    causes.push((field, format!("Invalid value: {n}: provided port is already allocated")));
                }
                Some(_) => {}
                None => {
                    let had = old
                        .iter()
                        .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                        .and_then(|o| o["nodePort"].as_i64())
                        .filter(|n| !taken.contains(n));
                    let n = had
                        .or_else(|| NODE_PORTS.clone().find(|n| !taken.contains(n)))
                        .ok_or_else(|| ApiError::internal("the node port range 30000-32767 is full"))?;
                    taken.insert(n);
                    p["nodePort"] = n.into();
                }
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, causes));
        }
        Ok(())
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if events::serves(rt) {
            return Self::write_event_v1(rt, obj, None, |core, o| self.create(core, ns, o, opts));
        }
        Self::set_type_meta(rt, &mut obj)?;
        let ns = ns.filter(|_| rt.namespaced);
        {
            let m = metadata(&mut obj);
            match (ns, m.get("namespace").and_then(Value::as_str)) {
                (Some(want), Some(got)) if !got.is_empty() && got != want => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(want), _) => {
                    m.insert("namespace".into(), want.into());
                }
                (None, _) => {
                    m.remove("namespace");
                }
            }
            for f in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                m.remove(f);
            }
            m.insert("uid".into(), new_uid().into());
            m.insert("creationTimestamp".into(), now().into());
            if rt.custom.is_some()
                || (rt.has_status() && rt.kind != "Namespace" && rt.kind != "Node" && rt.kind != "Service")
            {
                m.insert("generation".into(), 1.into());
            }
        }
        let kind = if rt.custom.is_some() { "" } else { rt.kind };
        if rt.custom.is_some() && rt.has_status() {
            obj.as_object_mut().expect("checked").remove("status");
        }
        match kind {
            "Deployment" | "ReplicaSet" | "ReplicationController" | "DaemonSet" | "Job" | "StatefulSet" => {
                obj.as_object_mut().expect("checked").remove("status");
            }
            "Pod" => {
                let mut causes = Vec::new();
                crate::ephemeral::check_create(&obj, &mut causes);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(rt, name_of(&obj), causes));
                }
                obj["status"] = json!({})
            }
            "Namespace" => obj["status"] = json!({"phase": "Active"}),
            "PersistentVolumeClaim" | "PersistentVolume" => obj["status"] = json!({"phase": "Pending"}),
            _ => {}
        }
        if kind == "PersistentVolumeClaim" {
            let classes = self.list(by_kind("StorageClass").expect("served"), None, &ListOptions::default())?.items;
            stateful::default_class(&classes, &mut obj);
        }
        if kind == "Job" {
            let uid = uid_of(&obj).to_string();
            let job = name_of(&obj).to_string();
            if obj.pointer("/spec/selector").is_none() {
                obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                if let Some(t) = obj.pointer_mut("/spec/template").and_then(Value::as_object_mut) {
                    let m = t.entry("metadata").or_insert_with(|| json!({}));
                    m["labels"]["batch.kubernetes.io/controller-uid"] = uid.clone().into();
                    m["labels"]["batch.kubernetes.io/job-name"] = job.clone().into();
                    m["labels"]["controller-uid"] = uid.into();
                    m["labels"]["job-name"] = job.into();
                }
            }
        }
        let generate = meta_str(&obj, "generateName").filter(|g| !g.is_empty()).map(str::to_string);
        if name_of(&obj).is_empty()
            && let Some(g) = &generate
        {
            metadata(&mut obj).insert("name".into(), format!("{g}{}", random_suffix(5)).into());
        }
        if let Some(m) = &opts.field_manager {
            let entry = managed_entry(m, "Update", &rt.api_version(), &obj);
            metadata(&mut obj).insert("managedFields".into(), json!([entry]));
        }
        let (mut obj, warnings) = self.admit(rt, obj, opts)?;
        self.check_namespace(rt, ns)?;
        if kind == crd::KIND {
            let others = self.list(rt, None, &ListOptions::default())?.items;
            crd::set_status(&mut obj, &others, &json!({}), &now());
        }
        if kind == "Pod"
            && let Some(h) = self.hooks.get()
        {
            (h.admit_pod)(self, ns.unwrap_or_default(), &mut obj)?;
        }
        if let (Some(h), Some(ns)) = (self.hooks.get(), ns) {
            (h.admit_create)(self, rt, ns, &obj, opts.dry_run)?;
        }
        let _ip_lock;
        if kind == "Service" && obj.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") {
            _ip_lock = self.service_ips.lock().unwrap_or_else(|e| e.into_inner());
            if obj.pointer("/spec/clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
                let ip = self.allocate_cluster_ip()?;
                obj["spec"]["clusterIP"] = ip.clone().into();
                obj["spec"]["clusterIPs"] = json!([ip]);
            } else if obj.pointer("/spec/clusterIPs").is_none() {
                obj["spec"]["clusterIPs"] = json!([obj["spec"]["clusterIP"].clone()]);
            }
            self.assign_node_ports(rt, &mut obj, None)?;
        }
        if opts.dry_run {
            return Ok(Written { object: obj, warnings, created: true });
        }
        for attempt in 0..5 {
            let name = name_of(&obj).to_string();
            match self.store.create(&rt.key(ns, &name), &encode(&obj)) {
                Ok(rev) => {
                    metadata(&mut obj).insert("resourceVersion".into(), rev.to_string().into());
                    self.after_write(rt);
                    return Ok(Written { object: obj, warnings, created: true });
                }
                Err(StoreError::AlreadyExists { .. }) if generate.is_some() && attempt < 4 => {
                    let g = generate.clone().unwrap_or_default();
                    metadata(&mut obj).insert("name".into(), format!("{g}{}", random_suffix(5)).into());
                }
                Err(e) => return Err(ApiError::from_store(rt, &name, e)),
            }
        }
        Err(ApiError::internal("could not generate a unique name"))
    }

    /// Replaces an object (or its status) with `obj`, checking its
    /// resourceVersion when it carries one.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if events::serves(rt) {
            let core = by_kind("Event").expect("core Events are served");
            let old = self.get(core, ns, name)?;
            return Self::write_event_v1(rt, obj, Some(old), |core, o| self.update(core, ns, name, o, part, opts));
        }
        Self::set_type_meta(rt, &mut obj)?;
        let body_name = name_of(&obj);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let ns = ns.filter(|_| rt.namespaced);
        if let (Some(want), Some(got)) = (ns, namespace_of(&obj))
            && !got.is_empty()
            && got != want
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let current = self.get(rt, ns, name)?;
        let cur_rev: i64 = meta_str(&current, "resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|r| !r.is_empty())
            && rv.parse::<i64>().ok() != Some(cur_rev)
        {
            return Err(ApiError::modified(rt, name));
        }
        let mut new = match part {
            Part::Main => obj,
            Part::Status => {
                let mut n = current.clone();
                n["status"] = obj.get("status").cloned().unwrap_or(json!({}));
                n
            }
        };
        {
            let cm = current["metadata"].clone();
            let m = metadata(&mut new);
            m.insert("name".into(), name.into());
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ] {
                match cm.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            if !m.contains_key("managedFields")
                && let Some(mf) = cm.get("managedFields")
            {
                m.insert("managedFields".into(), mf.clone());
            }
        }
        if part == Part::Main && rt.has_status() {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("checked").remove("status");
                }
            }
        }
        if let Some(m) = &opts.field_manager {
            record_manager(&mut new, m, "Update", &rt.api_version(), &current);
        }
        let (mut new, warnings) = self.admit(rt, new, opts)?;
        let kind = if rt.custom.is_some() { "" } else { rt.kind };
        let mut causes = validation::validate_update(kind, &current, &new);
        if kind == "Pod" && part == Part::Main && !opts.subresource {
            validation::pod_spec_update(&current, &new, &mut causes);
        }
        causes.extend(stateful::validate_update(kind, &current, &new));
        causes.extend(crate::policy::validate_update(kind, &current, &new));
        if kind == crd::KIND {
            causes.extend(crd::validate_update(&current, &new));
            let others = self.list(rt, None, &ListOptions::default())?.items;
            crd::set_status(&mut new, &others, &current, &now());
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, name, causes));
        }
        let _ip_lock;
        if kind == "Service" && part == Part::Main {
            if new.pointer("/spec/clusterIP").is_none() {
                for f in ["clusterIP", "clusterIPs"] {
                    if let Some(v) = current.pointer(&format!("/spec/{f}")) {
                        new["spec"][f] = v.clone();
                    }
                }
            }
            _ip_lock = self.service_ips.lock().unwrap_or_else(|e| e.into_inner());
            self.assign_node_ports(rt, &mut new, Some(&current))?;
        }
        // Without a status subresource a custom object's status is part of what it asks for.
        let status_counts = rt.custom.is_some() && !rt.has_status() && current.get("status") != new.get("status");
        if let Some(g) = current.pointer("/metadata/generation").and_then(Value::as_i64)
            && (spec_part(&current) != spec_part(&new) || status_counts)
        {
            metadata(&mut new).insert("generation".into(), (g + 1).into());
        }
        if same_object(&current, &new) {
            return Ok(Written { object: current, warnings, created: false });
        }
        if opts.dry_run {
            return Ok(Written { object: new, warnings, created: false });
        }
        let key = rt.key(ns, name);
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers_of(&new).is_empty() && kind != "Namespace"
        {
            if kind == crd::KIND {
                self.delete_custom_objects(rt, &current)?;
            }
            let rev = self.store.delete(&key, Some(cur_rev)).map_err(|e| ApiError::from_store(rt, name, e))?;
            metadata(&mut new).insert("resourceVersion".into(), rev.to_string().into());
            self.after_write(rt);
            return Ok(Written { object: new, warnings, created: false });
        }
        let rev = self.store.update(&key, &encode(&new), cur_rev).map_err(|e| ApiError::from_store(rt, name, e))?;
        metadata(&mut new).insert("resourceVersion".into(), rev.to_string().into());
        self.after_write(rt);
        Ok(Written { object: new, warnings, created: false })
    }

    /// Reads, changes with `f`, writes; retries on conflicts. `f` returning
    /// `Ok(false)` means "nothing to change".
    pub fn modify(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        part: Part,
        opts: &WriteOptions,
        mut f: impl FnMut(&mut Value) -> Result<bool, ApiError>,
    ) -> Result<Written, ApiError> {
        let mut last = None;
        for _ in 0..8 {
            let mut o = self.get(rt, ns, name)?;
            if !f(&mut o)? {
                return Ok(Written { object: o, warnings: vec![], created: false });
            }
            match self.update(rt, ns, name, o, part, opts) {
                Err(e) if e.code == 409 && e.reason == "Conflict" => last = Some(e),
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| ApiError::modified(rt, name)))
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let ns = ns.filter(|_| rt.namespaced);
        let current = self.get(rt, ns, name)?;
        let uid = uid_of(&current).to_string();
        if opts.precondition_uid.as_ref().is_some_and(|u| *u != uid) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {uid}",
                    opts.precondition_uid.clone().unwrap_or_default()
                ),
            ));
        }
        if opts.precondition_rv.as_ref().is_some_and(|r| Some(r.as_str()) != meta_str(&current, "resourceVersion")) {
            return Err(ApiError::modified(rt, name));
        }
        let cur_rev: i64 = meta_str(&current, "resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
        // Pods on a node get a grace period: the kubelet deletes them.
        let kind = if rt.custom.is_some() { "" } else { rt.kind };
        let grace = if kind == "Pod" {
            let bound = current.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            let done = matches!(current.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
            let default = current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
            if bound && !done { opts.grace_period.unwrap_or(default) } else { 0 }
        } else {
            0
        };
        let mut finalizers = finalizers_of(&current);
        match opts.propagation {
            Some(Propagation::Foreground) if !finalizers.contains(&"foregroundDeletion".to_string()) => {
                finalizers.push("foregroundDeletion".into())
            }
            Some(Propagation::Orphan) if !finalizers.contains(&"orphan".to_string()) => {
                finalizers.push("orphan".into())
            }
            _ => {}
        }
        let namespace_finalize = kind == "Namespace";
        if grace > 0 || !finalizers.is_empty() || namespace_finalize {
            if current.pointer("/metadata/deletionTimestamp").is_some()
                && finalizers == finalizers_of(&current)
                && grace == 0
            {
                return Ok(current);
            }
            let mut new = current.clone();
            let m = metadata(&mut new);
            if !m.contains_key("deletionTimestamp") {
                let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(grace);
                m.insert("deletionTimestamp".into(), format_time(at).into());
            }
            m.insert("deletionGracePeriodSeconds".into(), grace.into());
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), json!(finalizers));
            }
            if namespace_finalize {
                new["status"]["phase"] = "Terminating".into();
            }
            if opts.dry_run {
                return Ok(new);
            }
            let rev = self
                .store
                .update(&rt.key(ns, name), &encode(&new), cur_rev)
                .map_err(|e| ApiError::from_store(rt, name, e))?;
            metadata(&mut new).insert("resourceVersion".into(), rev.to_string().into());
            self.after_write(rt);
            return Ok(new);
        }
        if !opts.dry_run {
            if kind == crd::KIND {
                self.delete_custom_objects(rt, &current)?;
            }
            self.store.delete(&rt.key(ns, name), Some(cur_rev)).map_err(|e| ApiError::from_store(rt, name, e))?;
            self.after_write(rt);
        }
        if rt.returns_deleted_object() {
            return Ok(current);
        }
        Ok(success(rt, name, &uid))
    }

    /// Removes a terminating namespace once it is empty (the namespace
    /// controller calls this).
    pub fn finalize_namespace(&self, name: &str) -> Result<(), ApiError> {
        let rt = by_kind("Namespace").expect("namespaces are served");
        let n = self.get(rt, None, name)?;
        if n.pointer("/metadata/deletionTimestamp").is_none() || !finalizers_of(&n).is_empty() {
            return Ok(());
        }
        let rev: i64 = meta_str(&n, "resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
        self.store.delete(&rt.key(None, name), Some(rev)).map_err(|e| ApiError::from_store(rt, name, e))?;
        Ok(())
    }

    /// Creates the namespaces and objects every cluster has.
    pub fn bootstrap(&self, api_address: &str) -> Result<(), ApiError> {
        let ns = by_kind("Namespace").expect("served");
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            match self.create(ns, None, json!({"metadata": {"name": n}}), &WriteOptions::default()) {
                Err(e) if e.reason == "AlreadyExists" => {}
                r => {
                    r?;
                }
            }
        }
        let svc = by_kind("Service").expect("served");
        let (host, port) = api_address.rsplit_once(':').unwrap_or((api_address, "6443"));
        let port: u16 = port.parse().unwrap_or(6443);
        let kubernetes = json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": port}]}});
        match self.create(svc, Some("default"), kubernetes, &WriteOptions::default()) {
            Err(e) if e.reason == "AlreadyExists" => {}
            r => {
                r?;
            }
        }
        // Cluster DNS: every kubelet answers at this address (the node-net crate's `dns`); the
        // Service reserves it and shows it, as kube-dns does in k3s.
        let kube_dns = json!({"metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": crate::cluster::CLUSTER_DNS_IP.to_string(), "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
        match self.create(svc, Some("kube-system"), kube_dns, &WriteOptions::default()) {
            Err(e) if e.reason == "AlreadyExists" => {}
            r => {
                r?;
            }
        }
        let ep = by_kind("Endpoints").expect("served");
        let endpoints = json!({"metadata": {"name": "kubernetes"},
            "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
        match self.create(ep, Some("default"), endpoints.clone(), &WriteOptions::default()) {
            Err(e) if e.reason == "AlreadyExists" => {
                self.modify(ep, Some("default"), "kubernetes", Part::Main, &WriteOptions::default(), |o| {
                    o["subsets"] = endpoints["subsets"].clone();
                    Ok(true)
                })?;
            }
            r => {
                r?;
            }
        }
        let sc = by_kind("StorageClass").expect("served");
        match self.create(sc, None, stateful::local_path_class(), &WriteOptions::default()) {
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

/// The leaf paths of a JSON object, in `fieldsV1` form.
pub fn fields_v1(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                if matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                let inner = match v {
                    Value::Object(_) => fields_v1(v),
                    Value::Array(items) if items.iter().all(|i| i.get("name").is_some()) && !items.is_empty() => {
                        let mut keyed = serde_json::Map::new();
                        for i in items {
                            keyed.insert(format!("k:{{\"name\":{}}}", i["name"]), fields_v1(i));
                        }
                        Value::Object(keyed)
                    }
                    _ => json!({}),
                };
                out.insert(format!("f:{k}"), inner);
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

fn managed_entry(manager: &str, operation: &str, api_version: &str, obj: &Value) -> Value {
    let mut fields = obj.clone();
    if let Some(m) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|k, _| matches!(k.as_str(), "labels" | "annotations" | "finalizers" | "ownerReferences"));
    }
    json!({"manager": manager, "operation": operation, "apiVersion": api_version, "time": now(),
        "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&fields)})
}

/// Records `manager` in `new`'s managedFields (replacing its previous entry
/// for the same operation).
pub fn record_manager(new: &mut Value, manager: &str, operation: &str, api_version: &str, _old: &Value) {
    let entry = managed_entry(manager, operation, api_version, new);
    let m = metadata(new);
    let list = m.entry("managedFields").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.retain(|e| !(e["manager"] == manager && e["operation"] == operation));
        list.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;
    use orchestrator_store::{Durability, SqliteStore};

    fn registry() -> (tempfile::TempDir, Registry) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("db"), Durability::Normal).unwrap();
        let r = Registry::new(Arc::new(s));
        r.bootstrap("127.0.0.1:6443").unwrap();
        (d, r)
    }

    #[test]
    fn create_get_update_conflict_and_generation() {
        let (_d, r) = registry();
        let cm = by_kind("ConfigMap").unwrap();
        let w = r
            .create(
                cm,
                Some("default"),
                json!({"metadata": {"generateName": "c-"}, "data": {"a": "1"}}),
                &WriteOptions::default(),
            )
            .unwrap();
        let name = name_of(&w.object).to_string();
        assert!(name.starts_with("c-") && name.len() == 7);
        assert_eq!(w.object["metadata"]["uid"].as_str().unwrap().len(), 36);
        let mut stale = w.object.clone();
        stale["data"]["a"] = "2".into();
        r.update(cm, Some("default"), &name, stale.clone(), Part::Main, &WriteOptions::default()).unwrap();
        let e = r.update(cm, Some("default"), &name, stale, Part::Main, &WriteOptions::default()).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        let e = r.create(cm, Some("nope"), json!({"metadata": {"name": "x"}}), &WriteOptions::default()).unwrap_err();
        assert_eq!(e.message, "namespaces \"nope\" not found");

        let dep = by_kind("Deployment").unwrap();
        let body = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}});
        let d = r.create(dep, Some("default"), body, &WriteOptions::default()).unwrap().object;
        assert_eq!(d["metadata"]["generation"], 1);
        let mut s = d.clone();
        s["status"] = json!({"replicas": 3});
        let same = r.update(dep, Some("default"), "web", s.clone(), Part::Main, &WriteOptions::default()).unwrap();
        assert_eq!(
            same.object["metadata"]["resourceVersion"], d["metadata"]["resourceVersion"],
            "status ignored: no write"
        );
        let st = r.update(dep, Some("default"), "web", s, Part::Status, &WriteOptions::default()).unwrap().object;
        assert_eq!((st["status"]["replicas"].as_i64(), st["metadata"]["generation"].as_i64()), (Some(3), Some(1)));
        let mut spec = st.clone();
        spec["spec"]["replicas"] = 2.into();
        let g = r.update(dep, Some("default"), "web", spec, Part::Main, &WriteOptions::default()).unwrap().object;
        assert_eq!(g["metadata"]["generation"], 2);
    }

    #[test]
    fn node_ports_are_given_kept_refused_when_taken_and_dropped_for_cluster_ip() {
        let (_d, r) = registry();
        let svc = by_kind("Service").unwrap();
        let w = WriteOptions::default();
        let body = |name: &str, ty: &str, node_port: Option<i64>| {
            let mut port = json!({"port": 80});
            if let Some(n) = node_port {
                port["nodePort"] = n.into();
            }
            json!({"metadata": {"name": name}, "spec": {"type": ty, "selector": {"app": name}, "ports": [port]}})
        };
        let a = r.create(svc, Some("default"), body("a", "NodePort", None), &w).unwrap().object;
        assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
        let b = r.create(svc, Some("default"), body("b", "NodePort", Some(30001)), &w).unwrap().object;
        assert_eq!(b["spec"]["ports"][0]["nodePort"], 30001);
        let e = r.create(svc, Some("default"), body("c", "LoadBalancer", Some(30001)), &w).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"));
        let e = r.create(svc, Some("default"), body("c", "NodePort", Some(80)), &w).unwrap_err();
        assert!(e.message.contains("The range of valid ports is 30000-32767"), "{}", e.message);
        let c = r.create(svc, Some("default"), body("c", "LoadBalancer", None), &w).unwrap().object;
        assert_eq!(c["spec"]["ports"][0]["nodePort"], 30002);
        // An update without the node port keeps it; a change to ClusterIP drops it.
        let mut again = a.clone();
        again["spec"]["ports"][0].as_object_mut().unwrap().remove("nodePort");
        let kept = r.update(svc, Some("default"), "a", again.clone(), Part::Main, &w).unwrap().object;
        assert_eq!(kept["spec"]["ports"][0]["nodePort"], 30000);
        again["spec"]["type"] = "ClusterIP".into();
        again["metadata"]["resourceVersion"] = kept["metadata"]["resourceVersion"].clone();
        let plain = r.update(svc, Some("default"), "a", again, Part::Main, &w).unwrap().object;
        assert!(plain["spec"]["ports"][0].get("nodePort").is_none(), "{plain}");
        let d = r.create(svc, Some("default"), body("d", "NodePort", Some(30000)), &w).unwrap().object;
        assert_eq!(d["spec"]["ports"][0]["nodePort"], 30000, "freed by the change to ClusterIP");
    }

    #[test]
    fn strict_validation_and_invalid() {
        let (_d, r) = registry();
        let cm = by_kind("ConfigMap").unwrap();
        let strict = WriteOptions { validation: FieldValidation::Strict, ..Default::default() };
        let e = r.create(cm, Some("default"), json!({"metadata": {"name": "a", "bogus": 1}}), &strict).unwrap_err();
        assert!(e.message.contains("unknown field \"metadata.bogus\""), "{}", e.message);
        let w = r
            .create(cm, Some("default"), json!({"metadata": {"name": "a", "bogus": 1}}), &WriteOptions::default())
            .unwrap();
        assert_eq!(w.warnings, vec!["unknown field \"metadata.bogus\"".to_string()]);
        let e = r
            .create(cm, Some("default"), json!({"metadata": {"name": "Bad_Name"}}), &WriteOptions::default())
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn finalizers_hold_deletion_and_list_pages() {
        let (_d, r) = registry();
        let cm = by_kind("ConfigMap").unwrap();
        let o = WriteOptions::default();
        r.create(cm, Some("default"), json!({"metadata": {"name": "f", "finalizers": ["x/y"]}}), &o).unwrap();
        let d = r.delete(cm, Some("default"), "f", &DeleteOptions::default()).unwrap();
        assert!(d.pointer("/metadata/deletionTimestamp").is_some());
        r.modify(cm, Some("default"), "f", Part::Main, &o, |o| {
            o["metadata"]["finalizers"] = json!([]);
            Ok(true)
        })
        .unwrap();
        assert_eq!(r.get(cm, Some("default"), "f").unwrap_err().code, 404);
        for i in 0..5 {
            r.create(
                cm,
                Some("default"),
                json!({"metadata": {"name": format!("p{i}"), "labels": {"i": i.to_string()}}}),
                &o,
            )
            .unwrap();
        }
        let first = r.list(cm, Some("default"), &ListOptions { limit: 2, ..Default::default() }).unwrap();
        assert_eq!(first.items.len(), 2);
        let rest = r
            .list(
                cm,
                Some("default"),
                &ListOptions { limit: 10, continue_token: first.continue_token, ..Default::default() },
            )
            .unwrap();
        assert_eq!(rest.items.len(), 3);
        assert!(rest.continue_token.is_none());
        let sel = ListOptions { labels: LabelSelector::parse("i in (1,3)").unwrap(), ..Default::default() };
        assert_eq!(r.list(cm, None, &sel).unwrap().items.len(), 2);
    }

    #[tokio::test]
    async fn watch_filters_by_selector_and_compacted_revisions_are_gone() {
        let (_d, r) = registry();
        let cm = by_kind("ConfigMap").unwrap();
        let o = WriteOptions::default();
        let from = r.store.current_revision().unwrap();
        let mut w = r
            .watch(cm, Some("default"), from, LabelSelector::parse("app=a").unwrap(), FieldSelector::default())
            .unwrap();
        r.create(cm, Some("default"), json!({"metadata": {"name": "x", "labels": {"app": "b"}}}), &o).unwrap();
        r.create(cm, Some("default"), json!({"metadata": {"name": "y", "labels": {"app": "a"}}}), &o).unwrap();
        let e = w.next().await.unwrap();
        assert_eq!((e.kind, name_of(&e.object)), ("ADDED", "y"));
        r.modify(cm, Some("default"), "x", Part::Main, &o, |v| {
            v["metadata"]["labels"]["app"] = "a".into();
            Ok(true)
        })
        .unwrap();
        let e = w.next().await.unwrap();
        assert_eq!((e.kind, name_of(&e.object)), ("ADDED", "x"), "started matching");
        r.modify(cm, Some("default"), "y", Part::Main, &o, |v| {
            v["metadata"]["labels"]["app"] = "c".into();
            Ok(true)
        })
        .unwrap();
        let e = w.next().await.unwrap();
        assert_eq!((e.kind, name_of(&e.object)), ("DELETED", "y"), "stopped matching");
        r.store.compact(r.store.current_revision().unwrap()).unwrap();
        let gone = r.watch(cm, None, from, LabelSelector::default(), FieldSelector::default()).err().unwrap();
        let e = ApiError::from_store(cm, "", gone);
        assert_eq!((e.code, e.reason), (410, "Expired"));
    }
}
