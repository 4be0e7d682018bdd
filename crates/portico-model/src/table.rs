//! The routing table: the inputs, and the indexes compiled from them.
//!
//! A change updates the inputs and then only the parts of the indexes that depend on what
//! changed: one Ingress re-plans that Ingress and rebuilds its hosts; one EndpointSlice
//! re-resolves the backends of its Service; one Secret re-parses that certificate. Only a
//! change of IngressClass or settings, which can change which Ingresses are ours, rebuilds
//! everything. Rebuilding from the inputs gives exactly what the incremental path gives, which
//! is what makes a snapshot (the inputs alone) enough to restore a table.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::host::{self, HostKey, MAX_HOST_LEN};
use crate::host_routes::{HostRoutes, Origin};
use crate::key::ObjectKey;
use crate::plan::{Admission, IngressPlan, MAX_REGEX_PATHS_PER_NAMESPACE, Precedence};
use crate::problem::{Problem, ProblemReason};
use crate::resolve;
use crate::route::{Backend, BackendKey, BackendTarget, PathMatch, Route, Unavailable};
use crate::settings::Settings;
use crate::source::{
    EndpointSliceSource, IngressClassSource, IngressSource, Resource, ResourceKind, SecretSource,
    ServiceSource, UnixSeconds,
};
use crate::tls::{CertificateError, TlsCertificate};

/// The indexes requests are looked up in: persistent (cheap to clone) and fast to hash.
type HashMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// The compiled routing table. Cheap to clone: its parts are shared, so each applied version
/// can be published whole while the next one is built.
#[derive(Clone, Default)]
pub struct RoutingTable {
    version: u64,
    inputs: Inputs,
    derived: Derived,
}

/// Everything the table is compiled from. This, with the version, is the snapshot.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
struct Inputs {
    settings: Settings,
    classes: OrdMap<ObjectKey, Arc<IngressClassSource>>,
    ingresses: OrdMap<ObjectKey, Arc<IngressSource>>,
    services: OrdMap<ObjectKey, Arc<ServiceSource>>,
    slices: OrdMap<ObjectKey, Arc<EndpointSliceSource>>,
    secrets: OrdMap<ObjectKey, Arc<SecretSource>>,
    /// The last version of each TLS Secret that parsed, served while the current one is
    /// broken or missing. Part of the inputs because it depends on history.
    last_good_secrets: OrdMap<ObjectKey, Arc<SecretSource>>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u64,
    inputs: Inputs,
}

#[derive(Clone, Default)]
struct Derived {
    plans: OrdMap<ObjectKey, Arc<IngressPlan>>,
    /// The accepted Ingresses with rules for each host, oldest first.
    host_members: OrdMap<HostKey, OrdSet<Precedence>>,
    exact_hosts: HashMap<Arc<str>, Arc<HostRoutes>>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: HashMap<Arc<str>, Arc<HostRoutes>>,
    any_host: Option<Arc<HostRoutes>>,
    /// How many accepted paths (and default backends) use each backend.
    backend_refs: OrdMap<BackendKey, usize>,
    backends: HashMap<BackendKey, Arc<Backend>>,
    slices_by_service: OrdMap<ObjectKey, OrdSet<ObjectKey>>,
    /// Rules refused because their host belongs to another namespace, or their regexes are
    /// over their namespace's budget, by host.
    refused_hosts: OrdMap<HostKey, Arc<Vec<(ObjectKey, Problem)>>>,
    /// Accepted Ingresses with `use-regex` paths, by namespace, oldest first, with how many
    /// regex paths each has.
    regex_plans: OrdMap<Arc<str>, OrdMap<Precedence, usize>>,
    /// Ingresses whose regex paths would take their namespace over
    /// `MAX_REGEX_PATHS_PER_NAMESPACE`: those paths are skipped.
    regex_over_budget: OrdSet<ObjectKey>,
    /// Accepted Ingresses that set `spec.defaultBackend`, oldest first.
    default_backend_members: OrdSet<Precedence>,
    /// The oldest default backend of each namespace: it answers unmatched paths on the
    /// hosts that namespace owns.
    default_routes: OrdMap<Arc<str>, Arc<Route>>,
    /// The oldest default backend of all, for requests whose host no rule claims; only
    /// when the settings allow a catch-all.
    catch_all: Option<Arc<Route>>,
    /// Accepted Ingresses that reference each TLS Secret, oldest first.
    tls_refs: OrdMap<ObjectKey, OrdSet<Precedence>>,
    /// Host names listed in `tls.hosts` of accepted Ingresses, with the Ingresses that list
    /// each, oldest first.
    tls_hosts: OrdMap<Arc<str>, OrdSet<Precedence>>,
    certificates: OrdMap<ObjectKey, CertificateState>,
    sni_exact: HashMap<Arc<str>, Arc<TlsCertificate>>,
    sni_wildcard: HashMap<Arc<str>, Arc<TlsCertificate>>,
}

#[derive(Clone, Debug)]
struct CertificateState {
    /// What is served: the current Secret if it parses, else its last good version.
    served: Option<Arc<TlsCertificate>>,
    /// Why the current Secret is not the one served.
    error: Option<SecretError>,
}

#[derive(Clone, Debug, PartialEq)]
enum SecretError {
    Missing,
    Invalid(CertificateError),
}

/// Whether an Ingress is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressVerdict {
    /// Another controller's class, an unknown class, or no class when we take none.
    NotOurs,
    /// Served (some paths may still have problems).
    Accepted,
    /// Ours, but invalid: nothing of it is served.
    Rejected,
}

impl RoutingTable {
    /// Compiles a table from scratch.
    pub fn compile(settings: Settings, resources: Vec<Resource>) -> Self {
        let mut table = Self::default();
        table.apply(
            0,
            &Change::Resync {
                settings,
                resources,
            },
        );
        table
    }

    /// The version of the last change applied (the Raft log index, as the replicator sets it).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn settings(&self) -> &Settings {
        &self.inputs.settings
    }

    /// The input object `kind`/`key` as last applied (not a last good Secret kept from before).
    pub fn input(&self, kind: ResourceKind, key: &ObjectKey) -> Option<Resource> {
        let inputs = &self.inputs;
        match kind {
            ResourceKind::Ingress => inputs.ingresses.get(key).cloned().map(Resource::Ingress),
            ResourceKind::IngressClass => {
                inputs.classes.get(key).cloned().map(Resource::IngressClass)
            }
            ResourceKind::Service => inputs.services.get(key).cloned().map(Resource::Service),
            ResourceKind::EndpointSlice => {
                inputs.slices.get(key).cloned().map(Resource::EndpointSlice)
            }
            ResourceKind::Secret => inputs.secrets.get(key).cloned().map(Resource::Secret),
        }
    }

    /// The keys of every input object, by kind: what a controller compares with the API
    /// server's objects to propose only the difference.
    pub fn input_keys(&self) -> impl Iterator<Item = (ResourceKind, &ObjectKey)> {
        let inputs = &self.inputs;
        inputs
            .ingresses
            .keys()
            .map(|k| (ResourceKind::Ingress, k))
            .chain(
                inputs
                    .classes
                    .keys()
                    .map(|k| (ResourceKind::IngressClass, k)),
            )
            .chain(inputs.services.keys().map(|k| (ResourceKind::Service, k)))
            .chain(
                inputs
                    .slices
                    .keys()
                    .map(|k| (ResourceKind::EndpointSlice, k)),
            )
            .chain(inputs.secrets.keys().map(|k| (ResourceKind::Secret, k)))
    }

    /// Applies one change and sets the table's version.
    pub fn apply(&mut self, version: u64, change: &Change) {
        self.version = version;
        match change {
            Change::Upsert(resource) => self.upsert(resource),
            Change::Delete { kind, key } => self.delete(*kind, key),
            Change::Resync {
                settings,
                resources,
            } => {
                let last_good_secrets = std::mem::take(&mut self.inputs.last_good_secrets);
                self.inputs = Inputs {
                    settings: settings.clone(),
                    last_good_secrets,
                    ..Inputs::default()
                };
                for resource in resources {
                    self.insert_input(resource);
                }
                self.rebuild();
            }
            Change::Settings(settings) => {
                self.inputs.settings = settings.clone();
                self.rebuild();
            }
            Change::Batch(changes) => {
                for change in changes {
                    self.apply(version, change);
                }
            }
        }
    }

    /// Encodes the table's inputs compactly, for Raft snapshots. Two tables with the same
    /// inputs encode to the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            version: self.version,
            inputs: self.inputs.clone(),
        };
        postcard::to_stdvec(&snapshot).expect("encoding to memory cannot fail")
    }

    /// Decodes a snapshot and recompiles the table from it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        let snapshot: Snapshot = postcard::from_bytes(bytes).map_err(crate::DecodeError)?;
        let mut table = Self {
            version: snapshot.version,
            inputs: snapshot.inputs,
            derived: Derived::default(),
        };
        table.rebuild();
        Ok(table)
    }

    /// The route for a request, falling back to a default backend; `None` means 404.
    ///
    /// `host` is the `Host` header or `:authority` (case, port and a trailing dot are
    /// ignored); `path` is the request path without the query string. A request goes to the
    /// most specific host that has rules (exact, then wildcard, then rules without host) and
    /// only that host's paths are considered, as in nginx's server blocks. An unmatched path
    /// goes to the default backend of the namespace that owns the host (never another
    /// namespace's); a host no rule names goes to the catch-all, when the settings allow one.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        match self.select_host(host) {
            Some(routes) => routes.find(path).or_else(|| {
                let owner = routes.owner.as_ref()?;
                self.derived.default_routes.get(owner).map(|r| &**r)
            }),
            None => self.derived.catch_all.as_deref(),
        }
    }

    fn select_host(&self, host: &str) -> Option<&HostRoutes> {
        let mut buf = [0; MAX_HOST_LEN];
        if let Some(name) = host::normalize_request_host(host, &mut buf) {
            if let Some(routes) = self.derived.exact_hosts.get(name) {
                return Some(routes);
            }
            if let Some(suffix) = host::wildcard_suffix(name)
                && let Some(routes) = self.derived.wildcard_hosts.get(suffix)
            {
                return Some(routes);
            }
        }
        self.derived.any_host.as_deref()
    }

    /// The backend a route names.
    pub fn backend(&self, key: &BackendKey) -> Option<&Arc<Backend>> {
        self.derived.backends.get(key)
    }

    /// The certificate for a TLS client hello: the Secret of the oldest Ingress that lists the
    /// name (exact, then wildcard) in `tls.hosts`, is in the namespace that owns the host,
    /// and whose certificate covers it; then the configured default certificate. A SAN alone
    /// claims nothing. `None` means the caller's own default.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<&Arc<TlsCertificate>> {
        let mut buf = [0; MAX_HOST_LEN];
        if let Some(name) = server_name.and_then(|n| host::normalize_request_host(n, &mut buf)) {
            if let Some(cert) = self.derived.sni_exact.get(name) {
                return Some(cert);
            }
            if let Some(suffix) = host::wildcard_suffix(name)
                && let Some(cert) = self.derived.sni_wildcard.get(suffix)
            {
                return Some(cert);
            }
        }
        let default = self.inputs.settings.default_certificate.as_ref()?;
        self.derived.certificates.get(default)?.served.as_ref()
    }

    /// Every route, by host (exact hosts sorted, then wildcards, then rules without host),
    /// then by path precedence as written; the default backends' routes (one per namespace)
    /// last.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        let mut hosts: Vec<(&HostKey, &HostRoutes)> = Vec::new();
        for key in self.derived.host_members.keys() {
            let routes = match key {
                HostKey::Exact(h) => self.derived.exact_hosts.get(h),
                HostKey::Wildcard(s) => self.derived.wildcard_hosts.get(s),
                HostKey::Any => self.derived.any_host.as_ref(),
            };
            if let Some(routes) = routes {
                hosts.push((key, routes));
            }
        }
        hosts
            .into_iter()
            .flat_map(|(_, routes)| routes.routes().iter())
            .chain(self.derived.default_routes.values().map(|r| &**r))
    }

    /// Whether an Ingress is served; `None` if the table has no such Ingress.
    pub fn ingress_verdict(&self, key: &ObjectKey) -> Option<IngressVerdict> {
        self.derived
            .plans
            .get(key)
            .map(|plan| match plan.admission {
                Admission::NotOurs => IngressVerdict::NotOurs,
                Admission::Accepted => IngressVerdict::Accepted,
                Admission::Rejected => IngressVerdict::Rejected,
            })
    }

    /// Every Ingress in the table with its verdict.
    pub fn ingresses(&self) -> impl Iterator<Item = (&ObjectKey, IngressVerdict)> {
        self.derived
            .plans
            .keys()
            .map(|key| (key, self.ingress_verdict(key).expect("planned")))
    }

    /// The problems of one Ingress of ours, at time `now` (for certificate validity).
    /// Empty for Ingresses that are not ours: those are another controller's business.
    pub fn problems(&self, key: &ObjectKey, now: UnixSeconds) -> Vec<Problem> {
        let Some(plan) = self.derived.plans.get(key) else {
            return Vec::new();
        };
        let mut problems = plan.problems.clone();
        if plan.admission != Admission::Accepted {
            return problems;
        }
        // Conflicts with older rules, on each host this Ingress has rules for.
        let hosts: BTreeSet<&HostKey> = plan.paths.iter().map(|p| &p.host).collect();
        for host in hosts {
            if let Some(routes) = self.host_routes(host) {
                problems.extend(
                    routes
                        .conflicts
                        .iter()
                        .filter(|(ingress, _)| ingress == key)
                        .map(|(_, p)| p.clone()),
                );
            }
            if let Some(refused) = self.derived.refused_hosts.get(host) {
                problems.extend(
                    refused
                        .iter()
                        .filter(|(ingress, _)| ingress == key)
                        .map(|(_, p)| p.clone()),
                );
            }
        }
        // `tls.hosts` names another namespace owns: this Ingress's certificate is not
        // served for them (rebuild_sni skips them); said here, never silently.
        for tls in &plan.tls {
            for name in &tls.hosts {
                let owner = self.host_owner(&HostKey::from_rule(Some(name)));
                if !self.may_use(owner.as_ref(), &key.namespace) {
                    problems.push(Problem::new(
                        format!("{}.hosts", tls.field),
                        ProblemReason::HostOwnedByAnotherNamespace,
                        format!(
                            "TLS host {name:?} belongs to another namespace (the one whose Ingress claimed it first); this Ingress's certificate is not served for it"
                        ),
                    ));
                }
            }
        }
        // Backends that cannot take requests.
        let mut seen = BTreeSet::new();
        let backends = plan
            .paths
            .iter()
            .map(|p| (&p.backend, p.field.as_str()))
            .chain(
                plan.default_backend
                    .as_ref()
                    .map(|b| (b, "spec.defaultBackend")),
            );
        for (backend, field) in backends {
            if !seen.insert(backend) {
                continue;
            }
            if let Some(BackendTarget::Unavailable(why)) =
                self.derived.backends.get(backend).map(|b| &b.target)
            {
                let (reason, message) = match why {
                    Unavailable::ServiceNotFound => (
                        ProblemReason::ServiceNotFound,
                        format!(
                            "Service {} not found; requests get 503 until it exists",
                            backend.service
                        ),
                    ),
                    Unavailable::PortNotFound => (
                        ProblemReason::ServicePortNotFound,
                        format!(
                            "Service {} has no port {}; requests get 503",
                            backend.service, backend.port
                        ),
                    ),
                    Unavailable::ExternalNameNotAllowed => (
                        ProblemReason::ExternalNameNotAllowed,
                        format!(
                            "Service {} is an ExternalName Service, which is not allowed (it must name a DNS name, and `portico run --allow-external-name-services` must be set); requests get 503",
                            backend.service
                        ),
                    ),
                };
                problems.push(Problem::new(
                    format!("{field}.backend.service"),
                    reason,
                    message,
                ));
            }
        }
        // TLS.
        for tls in &plan.tls {
            let Some(secret) = &tls.secret else { continue };
            let state = self.derived.certificates.get(secret);
            let served = state.and_then(|s| s.served.as_ref());
            let keeping = if served.is_some() {
                "; the last good certificate is still served"
            } else {
                "; the default certificate is served instead"
            };
            let field = format!("{}.secretName", tls.field);
            match state.map(|s| s.error.as_ref()) {
                None | Some(Some(SecretError::Missing)) => problems.push(Problem::new(
                    field,
                    ProblemReason::SecretNotFound,
                    format!("Secret {secret} not found{keeping}"),
                )),
                Some(Some(SecretError::Invalid(e))) => problems.push(Problem::new(
                    field,
                    match e {
                        CertificateError::TooLarge { .. } => ProblemReason::SecretTooLarge,
                        _ => ProblemReason::InvalidSecret,
                    },
                    format!("Secret {secret}: {e}{keeping}"),
                )),
                Some(None) => {}
            }
            if let Some(cert) = served {
                for (i, host) in tls.hosts.iter().enumerate() {
                    // A wildcard entry needs the same wildcard SAN; a name, any SAN covering it.
                    let covered = if host.starts_with("*.") {
                        cert.dns_names.iter().any(|san| san == host)
                    } else {
                        cert.covers(host)
                    };
                    if !covered {
                        problems.push(Problem::new(
                            format!("{}.hosts[{i}]", tls.field),
                            ProblemReason::CertificateHostMismatch,
                            format!(
                                "the certificate in Secret {secret} does not cover {host:?} (its names: {})",
                                cert.dns_names.join(", ")
                            ),
                        ));
                    }
                }
                if let Some(why) = cert.validity_problem(now) {
                    problems.push(Problem::new(
                        format!("{}.secretName", tls.field),
                        ProblemReason::CertificateNotValidNow,
                        format!("Secret {secret}: {why}"),
                    ));
                }
            }
        }
        problems
    }

    fn host_routes(&self, host: &HostKey) -> Option<&HostRoutes> {
        match host {
            HostKey::Exact(h) => self.derived.exact_hosts.get(h).map(|r| &**r),
            HostKey::Wildcard(s) => self.derived.wildcard_hosts.get(s).map(|r| &**r),
            HostKey::Any => self.derived.any_host.as_deref(),
        }
    }

    // ---- applying changes ----

    fn insert_input(&mut self, resource: &Resource) {
        let inputs = &mut self.inputs;
        let key = resource.key().clone();
        match resource {
            Resource::Ingress(o) => drop(inputs.ingresses.insert(key, o.clone())),
            Resource::IngressClass(o) => drop(inputs.classes.insert(key, o.clone())),
            Resource::Service(o) => drop(inputs.services.insert(key, o.clone())),
            Resource::EndpointSlice(o) => drop(inputs.slices.insert(key, o.clone())),
            Resource::Secret(o) => drop(inputs.secrets.insert(key, o.clone())),
        }
    }

    fn upsert(&mut self, resource: &Resource) {
        let key = resource.key().clone();
        let old_slice_service = match resource {
            Resource::EndpointSlice(_) => self.slice_service(&key),
            _ => None,
        };
        self.insert_input(resource);
        self.after_change(resource.kind(), &key, old_slice_service);
    }

    fn delete(&mut self, kind: ResourceKind, key: &ObjectKey) {
        let old_slice_service = match kind {
            ResourceKind::EndpointSlice => self.slice_service(key),
            _ => None,
        };
        let inputs = &mut self.inputs;
        let removed = match kind {
            ResourceKind::Ingress => inputs.ingresses.remove(key).is_some(),
            ResourceKind::IngressClass => inputs.classes.remove(key).is_some(),
            ResourceKind::Service => inputs.services.remove(key).is_some(),
            ResourceKind::EndpointSlice => inputs.slices.remove(key).is_some(),
            ResourceKind::Secret => inputs.secrets.remove(key).is_some(),
        };
        if removed {
            self.after_change(kind, key, old_slice_service);
        }
    }

    fn after_change(
        &mut self,
        kind: ResourceKind,
        key: &ObjectKey,
        old_slice_service: Option<ObjectKey>,
    ) {
        match kind {
            ResourceKind::Ingress => self.replan_ingress(key),
            // Which Ingresses are ours may change: recompile everything (rare).
            ResourceKind::IngressClass => self.rebuild(),
            ResourceKind::Service => self.refresh_service(key),
            ResourceKind::EndpointSlice => {
                let new_service = self
                    .inputs
                    .slices
                    .get(key)
                    .and_then(|s| slice_service_key(s));
                if let Some(old) = &old_slice_service {
                    remove_from_set(&mut self.derived.slices_by_service, old, key);
                }
                if let Some(new) = &new_service {
                    self.derived
                        .slices_by_service
                        .entry(new.clone())
                        .or_default()
                        .insert(key.clone());
                }
                for service in old_slice_service
                    .iter()
                    .chain(new_service.iter())
                    .collect::<BTreeSet<_>>()
                {
                    self.refresh_service(service);
                }
            }
            ResourceKind::Secret => {
                self.refresh_certificate(key);
                self.collect_unused_certificates();
                self.rebuild_sni();
            }
        }
    }

    fn slice_service(&self, slice: &ObjectKey) -> Option<ObjectKey> {
        self.inputs
            .slices
            .get(slice)
            .and_then(|s| slice_service_key(s))
    }

    /// Recompiles every index from the inputs.
    fn rebuild(&mut self) {
        self.derived = Derived::default();
        for (key, slice) in &self.inputs.slices {
            if let Some(service) = slice_service_key(slice) {
                self.derived
                    .slices_by_service
                    .entry(service)
                    .or_default()
                    .insert(key.clone());
            }
        }
        let secrets: BTreeSet<ObjectKey> = self
            .inputs
            .secrets
            .keys()
            .chain(self.inputs.last_good_secrets.keys())
            .cloned()
            .collect();
        for secret in &secrets {
            self.refresh_certificate(secret);
        }
        let keys: Vec<ObjectKey> = self.inputs.ingresses.keys().cloned().collect();
        let mut hosts = BTreeSet::new();
        for key in &keys {
            let plan = Arc::new(IngressPlan::new(
                &self.inputs.classes,
                &self.inputs.settings,
                &self.inputs.ingresses[key],
            ));
            hosts.extend(self.add_contributions(&plan));
            self.derived.plans.insert(key.clone(), plan);
        }
        let namespaces: Vec<Arc<str>> = self.derived.regex_plans.keys().cloned().collect();
        for namespace in &namespaces {
            self.refresh_regex_budget(namespace);
        }
        for host in hosts {
            self.rebuild_host(&host);
        }
        self.rebuild_default_route();
        self.collect_unused_certificates();
        self.rebuild_sni();
    }

    fn replan_ingress(&mut self, key: &ObjectKey) {
        let old = self.derived.plans.remove(key);
        let new = self.inputs.ingresses.get(key).map(|src| {
            Arc::new(IngressPlan::new(
                &self.inputs.classes,
                &self.inputs.settings,
                src,
            ))
        });
        if let (Some(old), Some(new)) = (&old, &new)
            && old == new
        {
            self.derived.plans.insert(key.clone(), new.clone());
            return;
        }
        let mut hosts = BTreeSet::new();
        if let Some(old) = &old {
            hosts.extend(self.remove_contributions(old));
        }
        if let Some(new) = &new {
            hosts.extend(self.add_contributions(new));
            self.derived.plans.insert(key.clone(), new.clone());
        }
        if old.as_ref().is_some_and(|p| p.regex_count() > 0)
            || new.as_ref().is_some_and(|p| p.regex_count() > 0)
        {
            hosts.extend(self.refresh_regex_budget(&key.namespace));
        }
        let dependents = self.hosts_under_wildcards(&hosts);
        hosts.extend(dependents);
        for host in &hosts {
            self.rebuild_host(host);
        }
        let default_changed = old.as_ref().is_some_and(|p| p.default_backend.is_some())
            || new.as_ref().is_some_and(|p| p.default_backend.is_some());
        if default_changed {
            self.rebuild_default_route();
        }
        // Who owns a host decides which certificates serve it; a wildcard's owner also owns
        // the names under it, which may be listed in tls.hosts without rules of their own.
        let tls_changed = old.as_ref().is_some_and(|p| !p.tls.is_empty())
            || new.as_ref().is_some_and(|p| !p.tls.is_empty())
            || hosts.iter().any(|h| {
                matches!(h, HostKey::Wildcard(_))
                    || h.tls_name()
                        .is_some_and(|n| self.derived.tls_hosts.contains_key(n.as_str()))
            });
        if tls_changed {
            self.collect_unused_certificates();
            self.rebuild_sni();
        }
    }

    /// Adds what an accepted plan contributes to the shared indexes; returns the hosts whose
    /// routes must be rebuilt.
    fn add_contributions(&mut self, plan: &IngressPlan) -> BTreeSet<HostKey> {
        let mut hosts = BTreeSet::new();
        if plan.admission != Admission::Accepted {
            return hosts;
        }
        let regexes = plan.regex_count();
        if regexes > 0 {
            self.derived
                .regex_plans
                .entry(plan.precedence.key.namespace.clone())
                .or_default()
                .insert(plan.precedence.clone(), regexes);
        }
        for path in &plan.paths {
            self.derived
                .host_members
                .entry(path.host.clone())
                .or_default()
                .insert(plan.precedence.clone());
            hosts.insert(path.host.clone());
            self.add_backend_ref(&path.backend);
        }
        if let Some(backend) = &plan.default_backend {
            self.add_backend_ref(backend);
            self.derived
                .default_backend_members
                .insert(plan.precedence.clone());
        }
        for tls in &plan.tls {
            if let Some(secret) = &tls.secret {
                self.derived
                    .tls_refs
                    .entry(secret.clone())
                    .or_default()
                    .insert(plan.precedence.clone());
                if !self.derived.certificates.contains_key(secret) {
                    self.refresh_certificate(secret);
                }
            }
            for host in &tls.hosts {
                self.derived
                    .tls_hosts
                    .entry(host.clone())
                    .or_default()
                    .insert(plan.precedence.clone());
                // The host's default ssl-redirect depends on whether it has TLS.
                hosts.insert(HostKey::from_rule(Some(host)));
            }
        }
        hosts
    }

    fn remove_contributions(&mut self, plan: &IngressPlan) -> BTreeSet<HostKey> {
        let mut hosts = BTreeSet::new();
        if plan.admission != Admission::Accepted {
            return hosts;
        }
        let namespace = &plan.precedence.key.namespace;
        if let Some(plans) = self.derived.regex_plans.get_mut(namespace) {
            plans.remove(&plan.precedence);
            if plans.is_empty() {
                self.derived.regex_plans.remove(namespace);
            }
        }
        for path in &plan.paths {
            remove_from_set(&mut self.derived.host_members, &path.host, &plan.precedence);
            hosts.insert(path.host.clone());
            self.remove_backend_ref(&path.backend);
        }
        if let Some(backend) = &plan.default_backend {
            self.remove_backend_ref(backend);
            self.derived
                .default_backend_members
                .remove(&plan.precedence);
        }
        for tls in &plan.tls {
            if let Some(secret) = &tls.secret {
                remove_from_set(&mut self.derived.tls_refs, secret, &plan.precedence);
            }
            for host in &tls.hosts {
                remove_from_set(&mut self.derived.tls_hosts, host, &plan.precedence);
                hosts.insert(HostKey::from_rule(Some(host)));
            }
        }
        hosts
    }

    fn add_backend_ref(&mut self, key: &BackendKey) {
        let count = self.derived.backend_refs.entry(key.clone()).or_default();
        *count += 1;
        if *count == 1 {
            let backend = self.resolve_backend(key);
            self.derived.backends.insert(key.clone(), backend);
        }
    }

    fn remove_backend_ref(&mut self, key: &BackendKey) {
        if let Some(count) = self.derived.backend_refs.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.derived.backend_refs.remove(key);
                self.derived.backends.remove(key);
            }
        }
    }

    fn resolve_backend(&self, key: &BackendKey) -> Arc<Backend> {
        let slices = self
            .derived
            .slices_by_service
            .get(&key.service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.inputs.slices.get(k).map(|s| &**s));
        let service = self.inputs.services.get(&key.service).map(|s| &**s);
        Arc::new(Backend::new(
            key.clone(),
            resolve::backend_target(
                service,
                &key.port,
                self.inputs.settings.allow_external_name_services,
                slices,
            ),
        ))
    }

    /// Re-resolves every backend of one Service (after the Service or its slices changed).
    fn refresh_service(&mut self, service: &ObjectKey) {
        let keys: Vec<BackendKey> = self
            .derived
            .backend_refs
            .range(BackendKey::first_of(service)..)
            .map(|(k, _)| k)
            .take_while(|k| k.service == *service)
            .cloned()
            .collect();
        for key in keys {
            let backend = self.resolve_backend(&key);
            let unchanged = self
                .derived
                .backends
                .get(&key)
                .is_some_and(|old| old.target == backend.target);
            // Keep the old Arc when nothing changed, so round-robin state carries on.
            if !unchanged {
                self.derived.backends.insert(key, backend);
            }
        }
    }

    /// The namespace a host belongs to: that of the oldest accepted Ingress with rules for
    /// it or, for an exact name, for the wildcard covering it (`*.example.com` claimed first
    /// owns `shop.example.com` too). `None` when no rule names it.
    fn host_owner(&self, host: &HostKey) -> Option<Arc<str>> {
        let oldest = |key: &HostKey| self.derived.host_members.get(key).and_then(|m| m.get_min());
        let parent = match host {
            HostKey::Exact(name) => host::wildcard_suffix(name)
                .and_then(|suffix| oldest(&HostKey::Wildcard(suffix.into()))),
            _ => None,
        };
        [oldest(host), parent]
            .into_iter()
            .flatten()
            .min()
            .map(|p| p.key.namespace.clone())
    }

    /// Whether an Ingress in `namespace` may add rules or certificates to a host `owner` owns.
    fn may_use(&self, owner: Option<&Arc<str>>, namespace: &Arc<str>) -> bool {
        self.inputs.settings.allow_cross_namespace_hosts || owner.is_none_or(|o| o == namespace)
    }

    /// The exact hosts whose owner may change with a change of these wildcard hosts.
    fn hosts_under_wildcards(&self, hosts: &BTreeSet<HostKey>) -> Vec<HostKey> {
        let suffixes: BTreeSet<&Arc<str>> = hosts
            .iter()
            .filter_map(|h| match h {
                HostKey::Wildcard(suffix) => Some(suffix),
                _ => None,
            })
            .collect();
        if suffixes.is_empty() {
            return Vec::new();
        }
        self.derived
            .host_members
            .keys()
            .filter(|key| match key {
                HostKey::Exact(name) => host::wildcard_suffix(name)
                    .is_some_and(|suffix| suffixes.contains(&Arc::<str>::from(suffix))),
                _ => false,
            })
            .cloned()
            .collect()
    }

    /// Recomputes which Ingresses of a namespace are over its regex budget: oldest first,
    /// an Ingress whose regex paths do not fit in what is left has them all skipped. Returns
    /// the hosts of the Ingresses whose standing changed.
    fn refresh_regex_budget(&mut self, namespace: &Arc<str>) -> BTreeSet<HostKey> {
        let mut over = BTreeSet::new();
        let mut used = 0;
        for (member, &count) in self
            .derived
            .regex_plans
            .get(namespace)
            .into_iter()
            .flatten()
        {
            if used + count > MAX_REGEX_PATHS_PER_NAMESPACE {
                over.insert(member.key.clone());
            } else {
                used += count;
            }
        }
        let before: BTreeSet<ObjectKey> = self
            .derived
            .regex_over_budget
            .iter()
            .filter(|k| k.namespace == *namespace)
            .cloned()
            .collect();
        let mut hosts = BTreeSet::new();
        for key in before.symmetric_difference(&over) {
            if let Some(plan) = self.derived.plans.get(key) {
                hosts.extend(plan.paths.iter().map(|p| p.host.clone()));
            }
        }
        for key in &before {
            self.derived.regex_over_budget.remove(key);
        }
        self.derived.regex_over_budget.extend(over);
        hosts
    }

    fn rebuild_host(&mut self, host: &HostKey) {
        let mut routes = HostRoutes::default();
        let owner = self.host_owner(host);
        let tls = host.tls_name().is_some_and(|name| {
            self.derived
                .tls_hosts
                .get(name.as_str())
                .is_some_and(|listers| {
                    listers
                        .iter()
                        .any(|p| self.may_use(owner.as_ref(), &p.key.namespace))
                })
        });
        let mut refused = Vec::new();
        for member in self.derived.host_members.get(host).into_iter().flatten() {
            let plan = &self.derived.plans[&member.key];
            let allowed = self.may_use(owner.as_ref(), &member.key.namespace);
            let over_budget = self.derived.regex_over_budget.contains(&member.key);
            for path in plan.paths.iter().filter(|p| p.host == *host) {
                if over_budget && matches!(path.path, PathMatch::Regex { .. }) {
                    refused.push((
                        member.key.clone(),
                        Problem::new(
                            format!("{}.path", path.field),
                            ProblemReason::RegexLimitExceeded,
                            format!(
                                "the namespace's older Ingresses already have close to {MAX_REGEX_PATHS_PER_NAMESPACE} use-regex paths, the most one namespace may have; this path is skipped"
                            ),
                        ),
                    ));
                    continue;
                }
                if !allowed {
                    let name = path.host_as_written.as_deref().unwrap_or("*");
                    refused.push((
                        member.key.clone(),
                        Problem::new(
                            path.field.as_str(),
                            ProblemReason::HostOwnedByAnotherNamespace,
                            format!(
                                "host {name:?} belongs to another namespace (the one whose Ingress claimed it first); this path is skipped"
                            ),
                        ),
                    ));
                    continue;
                }
                let route = Route {
                    ingress: member.key.clone(),
                    host: path.host_as_written.clone(),
                    path: path.path.clone(),
                    backend: path.backend.clone(),
                    policy: plan.policy.clone(),
                    redirect_to_https: plan.policy.force_ssl_redirect
                        || plan.policy.ssl_redirect.unwrap_or(tls),
                };
                routes.push(
                    route,
                    Origin {
                        ingress: &member.key,
                        field: &path.field,
                    },
                );
            }
        }
        routes.finish();
        routes.owner = owner;
        let routes = (!routes.is_empty()).then(|| Arc::new(routes));
        let d = &mut self.derived;
        if refused.is_empty() {
            d.refused_hosts.remove(host);
        } else {
            d.refused_hosts.insert(host.clone(), Arc::new(refused));
        }
        match (host, routes) {
            (HostKey::Exact(h), Some(r)) => drop(d.exact_hosts.insert(h.clone(), r)),
            (HostKey::Exact(h), None) => drop(d.exact_hosts.remove(h)),
            (HostKey::Wildcard(s), Some(r)) => drop(d.wildcard_hosts.insert(s.clone(), r)),
            (HostKey::Wildcard(s), None) => drop(d.wildcard_hosts.remove(s)),
            (HostKey::Any, r) => d.any_host = r,
        }
    }

    fn rebuild_default_route(&mut self) {
        let mut per_namespace: OrdMap<Arc<str>, Arc<Route>> = OrdMap::new();
        let mut catch_all = None;
        for member in &self.derived.default_backend_members {
            let plan = &self.derived.plans[&member.key];
            let route = Arc::new(Route {
                ingress: member.key.clone(),
                host: None,
                path: PathMatch::Prefix("".into()),
                backend: plan
                    .default_backend
                    .clone()
                    .expect("member has a default backend"),
                policy: plan.policy.clone(),
                redirect_to_https: plan.policy.force_ssl_redirect,
            });
            if catch_all.is_none() && self.inputs.settings.allow_catch_all {
                catch_all = Some(route.clone());
            }
            per_namespace
                .entry(member.key.namespace.clone())
                .or_insert(route);
        }
        self.derived.default_routes = per_namespace;
        self.derived.catch_all = catch_all;
    }

    // ---- certificates ----

    /// Parses one Secret again; a good one becomes the last good version of its name.
    fn refresh_certificate(&mut self, key: &ObjectKey) {
        let previous = self
            .derived
            .certificates
            .get(key)
            .and_then(|s| s.served.clone());
        let state = match self.inputs.secrets.get(key) {
            Some(secret) => match TlsCertificate::from_secret(secret) {
                Ok(cert) => {
                    self.inputs
                        .last_good_secrets
                        .insert(key.clone(), secret.clone());
                    CertificateState {
                        served: Some(Arc::new(cert)),
                        error: None,
                    }
                }
                Err(e) => CertificateState {
                    served: previous.or_else(|| self.parse_last_good(key)),
                    error: Some(SecretError::Invalid(e)),
                },
            },
            None => CertificateState {
                served: previous.or_else(|| self.parse_last_good(key)),
                error: Some(SecretError::Missing),
            },
        };
        self.derived.certificates.insert(key.clone(), state);
    }

    fn parse_last_good(&self, key: &ObjectKey) -> Option<Arc<TlsCertificate>> {
        let secret = self.inputs.last_good_secrets.get(key)?;
        TlsCertificate::from_secret(secret).ok().map(Arc::new)
    }

    /// Forgets certificates that no Ingress references and whose Secret is gone, so a
    /// deleted Secret is not served again by a later Ingress.
    fn collect_unused_certificates(&mut self) {
        let unused: Vec<ObjectKey> = self
            .derived
            .certificates
            .keys()
            .filter(|k| {
                !self.inputs.secrets.contains_key(*k)
                    && !self.derived.tls_refs.contains_key(*k)
                    && self.inputs.settings.default_certificate.as_ref() != Some(*k)
            })
            .cloned()
            .collect();
        for key in unused {
            self.derived.certificates.remove(&key);
            self.inputs.last_good_secrets.remove(&key);
        }
    }

    /// Indexes, for each name in some `tls.hosts`, the certificate of the oldest Ingress
    /// that lists it, may use the host (its namespace owns it), and has a certificate that
    /// covers it (a wildcard entry needs the same wildcard SAN). Names only in a SAN are not
    /// indexed: a certificate claims nothing by itself.
    fn rebuild_sni(&mut self) {
        let mut exact = HashMap::default();
        let mut wildcard = HashMap::default();
        for (name, listers) in &self.derived.tls_hosts {
            let key = HostKey::from_rule(Some(name));
            let owner = self.host_owner(&key);
            let cert = listers
                .iter()
                .filter(|p| self.may_use(owner.as_ref(), &p.key.namespace))
                .find_map(|p| {
                    let plan = self.derived.plans.get(&p.key)?;
                    plan.tls
                        .iter()
                        .filter(|t| t.hosts.contains(name))
                        .find_map(|t| {
                            let cert = self
                                .derived
                                .certificates
                                .get(t.secret.as_ref()?)?
                                .served
                                .as_ref()?;
                            let covered = if name.starts_with("*.") {
                                cert.dns_names.iter().any(|san| san == name)
                            } else {
                                cert.covers(name)
                            };
                            covered.then(|| cert.clone())
                        })
                });
            let Some(cert) = cert else { continue };
            match key {
                HostKey::Exact(h) => drop(exact.insert(h, cert)),
                HostKey::Wildcard(suffix) => drop(wildcard.insert(suffix, cert)),
                HostKey::Any => {}
            }
        }
        self.derived.sni_exact = exact;
        self.derived.sni_wildcard = wildcard;
    }
}

fn slice_service_key(slice: &EndpointSliceSource) -> Option<ObjectKey> {
    slice
        .service_name
        .as_deref()
        .map(|name| ObjectKey::new(slice.key.namespace.clone(), name))
}

fn remove_from_set<K: Ord + Clone, V: Ord + Clone>(
    map: &mut OrdMap<K, OrdSet<V>>,
    key: &K,
    value: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl fmt::Debug for RoutingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingTable")
            .field("version", &self.version)
            .field("ingresses", &self.inputs.ingresses.len())
            .field("hosts", &self.derived.host_members.len())
            .field("backends", &self.derived.backends.len())
            .field("certificates", &self.derived.certificates.len())
            .finish()
    }
}
