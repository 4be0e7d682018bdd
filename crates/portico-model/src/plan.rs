//! One Ingress, checked and turned into the paths, TLS entries and default backend it
//! contributes. A plan depends only on the Ingress, the IngressClasses and the settings, so
//! a change of Service, EndpointSlice or Secret never re-plans an Ingress.

use std::sync::Arc;

use imbl::OrdMap;
use regex::RegexBuilder;

use crate::annotations::{self, INGRESS_CLASS_ANNOTATION};
use crate::host::HostKey;
use crate::key::ObjectKey;
use crate::problem::{Problem, ProblemReason};
use crate::route::{BackendKey, PathMatch, RoutePolicy, ServicePortRef};
use crate::settings::Settings;
use crate::source::{BackendSource, IngressClassSource, IngressSource};
use crate::validate;

/// Route precedence between Ingresses: the oldest first, then by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Precedence {
    /// `creationTimestamp`; an Ingress without one counts as the newest.
    pub created: i64,
    pub key: ObjectKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    NotOurs,
    Accepted,
    Rejected,
}

#[derive(Debug, PartialEq)]
pub(crate) struct IngressPlan {
    pub precedence: Precedence,
    pub admission: Admission,
    /// Problems found in the Ingress itself (not in what it references).
    pub problems: Vec<Problem>,
    pub paths: Vec<PlannedPath>,
    pub default_backend: Option<BackendKey>,
    pub policy: Arc<RoutePolicy>,
    pub tls: Vec<PlannedTls>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct PlannedPath {
    pub host: HostKey,
    pub host_as_written: Option<Arc<str>>,
    pub path: PathMatch,
    pub backend: BackendKey,
    /// `spec.rules[i].http.paths[j]`.
    pub field: String,
}

#[derive(Debug, PartialEq)]
pub(crate) struct PlannedTls {
    /// Lower case, as the certificate index keys them.
    pub hosts: Vec<Arc<str>>,
    pub secret: Option<ObjectKey>,
    /// `spec.tls[i]`.
    pub field: String,
}

/// Regexes come from tenants' Ingresses and are compiled on every replica: bound their
/// compiled size, their length as written, and how many one Ingress may have.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
pub const MAX_REGEX_PATTERN_BYTES: usize = 1024;
pub const MAX_REGEX_PATHS_PER_INGRESS: usize = 100;
/// Over this, the newest Ingresses of a namespace have their regex paths skipped.
pub const MAX_REGEX_PATHS_PER_NAMESPACE: usize = 500;

impl IngressPlan {
    pub(crate) fn new(
        classes: &OrdMap<ObjectKey, Arc<IngressClassSource>>,
        settings: &Settings,
        src: &IngressSource,
    ) -> Self {
        let precedence = Precedence {
            created: src.creation_timestamp.unwrap_or(i64::MAX),
            key: src.key.clone(),
        };
        let mut plan = Self {
            precedence,
            admission: Admission::NotOurs,
            problems: Vec::new(),
            paths: Vec::new(),
            default_backend: None,
            policy: Arc::default(),
            tls: Vec::new(),
        };
        if !is_ours(classes, settings, src) {
            return plan;
        }

        plan.problems.extend(
            validate::ingress(src)
                .into_iter()
                .map(|v| Problem::new(v.field.clone(), ProblemReason::InvalidSpec, v.to_string())),
        );
        let (annotations, annotation_problems) = annotations::parse(&src.annotations);
        plan.problems.extend(annotation_problems);
        plan.policy = Arc::new(annotations.policy);

        let namespace = &src.key.namespace;
        let mut regex_count = 0;
        for (i, rule) in src.rules.iter().enumerate() {
            if let Some(host) = rule.host.as_deref().filter(|h| too_broad(h)) {
                plan.problems
                    .push(too_broad_problem(format!("spec.rules[{i}].host"), host));
            }
            let host = HostKey::from_rule(rule.host.as_deref());
            let host_as_written: Option<Arc<str>> = rule
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(Arc::from);
            for (j, path) in rule.http.iter().flatten().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let Some(backend) =
                    backend_key(namespace, &path.backend, &field, &mut plan.problems)
                else {
                    continue;
                };
                let written = path.path.as_deref().unwrap_or("");
                let matcher = if annotations.use_regex {
                    regex_count += 1;
                    if regex_count > MAX_REGEX_PATHS_PER_INGRESS {
                        plan.problems.push(Problem::new(
                            format!("{field}.path"),
                            ProblemReason::RegexLimitExceeded,
                            format!("more than {MAX_REGEX_PATHS_PER_INGRESS} use-regex paths in one Ingress"),
                        ));
                        continue;
                    }
                    match compile_regex(written) {
                        Ok(matcher) => matcher,
                        Err((reason, why)) => {
                            plan.problems
                                .push(Problem::new(format!("{field}.path"), reason, why));
                            continue;
                        }
                    }
                } else if path.path_type.as_deref() == Some("Exact") {
                    PathMatch::Exact(written.into())
                } else {
                    // Prefix, and ImplementationSpecific without use-regex.
                    PathMatch::Prefix(written.strip_suffix('/').unwrap_or(written).into())
                };
                plan.paths.push(PlannedPath {
                    host: host.clone(),
                    host_as_written: host_as_written.clone(),
                    path: matcher,
                    backend,
                    field,
                });
            }
        }
        if let Some(backend) = &src.default_backend {
            plan.default_backend = backend_key(
                namespace,
                backend,
                "spec.defaultBackend",
                &mut plan.problems,
            );
            if src.rules.is_empty() && !settings.allow_catch_all {
                plan.problems.push(Problem::new(
                    "spec.defaultBackend",
                    ProblemReason::CatchAllNotAllowed,
                    "this Ingress has only a defaultBackend, which answers only for hosts its namespace owns: the cluster-wide catch-all is off (portico run --allow-catch-all)",
                ));
            }
        }
        for (i, tls) in src.tls.iter().enumerate() {
            for (j, host) in tls.hosts.iter().enumerate() {
                if too_broad(host) {
                    plan.problems
                        .push(too_broad_problem(format!("spec.tls[{i}].hosts[{j}]"), host));
                }
            }
            plan.tls.push(PlannedTls {
                hosts: tls
                    .hosts
                    .iter()
                    .map(|h| Arc::from(h.trim_end_matches('.').to_ascii_lowercase()))
                    .collect(),
                secret: tls
                    .secret_name
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|name| ObjectKey::new(namespace.clone(), name)),
                field: format!("spec.tls[{i}]"),
            });
        }

        if plan.problems.iter().any(Problem::rejects_ingress) {
            plan.admission = Admission::Rejected;
            plan.paths.clear();
            plan.default_backend = None;
            plan.tls.clear();
        } else {
            plan.admission = Admission::Accepted;
        }
        plan
    }
}

impl IngressPlan {
    /// How many `use-regex` paths the plan has.
    pub(crate) fn regex_count(&self) -> usize {
        self.paths
            .iter()
            .filter(|p| matches!(p.path, PathMatch::Regex { .. }))
            .count()
    }
}

/// A `use-regex` path compiled: anchored at the start, case-insensitive (as ingress-nginx).
/// The pattern must be a complete expression on its own, so it cannot close the anchoring
/// group (`a)|(.*` would otherwise match anywhere).
fn compile_regex(written: &str) -> Result<PathMatch, (ProblemReason, String)> {
    if written.len() > MAX_REGEX_PATTERN_BYTES {
        return Err((
            ProblemReason::RegexLimitExceeded,
            format!(
                "use-regex path is {} bytes, over the limit of {MAX_REGEX_PATTERN_BYTES}",
                written.len()
            ),
        ));
    }
    let invalid = |e: &dyn std::fmt::Display| {
        (
            ProblemReason::InvalidPathRegex,
            format!("path {written:?} is not a valid regular expression (use-regex is set): {e}"),
        )
    };
    let ast = regex_syntax::ast::parse::Parser::new()
        .parse(written)
        .map_err(|e| invalid(&e))?;
    let regex = RegexBuilder::new(&format!("^(?:{written})"))
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| invalid(&e))?;
    Ok(PathMatch::Regex {
        pattern: written.into(),
        regex,
        literal_len: literal_prefix_len(&ast),
    })
}

/// How many bytes every match of the expression starts with literally: a regex ranks by
/// this (not by its length as written), so padding a pattern gains it nothing.
fn literal_prefix_len(ast: &regex_syntax::ast::Ast) -> usize {
    use regex_syntax::ast::Ast;
    let items = match ast {
        Ast::Concat(concat) => &concat.asts[..],
        Ast::Literal(_) => std::slice::from_ref(ast),
        _ => &[],
    };
    items
        .iter()
        .map_while(|item| match item {
            Ast::Literal(literal) => Some(literal.c.len_utf8()),
            _ => None,
        })
        .sum()
}

/// `*.com`: a wildcard with fewer than two labels after `*.` would claim every name under a
/// top-level domain.
fn too_broad(host: &str) -> bool {
    host.trim_end_matches('.')
        .strip_prefix("*.")
        .is_some_and(|suffix| !suffix.contains('.'))
}

fn too_broad_problem(field: String, host: &str) -> Problem {
    Problem::new(
        field,
        ProblemReason::WildcardTooBroad,
        format!("wildcard host {host:?} needs at least two labels after \"*.\""),
    )
}

/// Whether the Ingress belongs to one of our IngressClasses.
pub(crate) fn is_ours(
    classes: &OrdMap<ObjectKey, Arc<IngressClassSource>>,
    settings: &Settings,
    src: &IngressSource,
) -> bool {
    let ours = |class: &IngressClassSource| class.controller == settings.controller_name;
    let named = |name: &str| {
        classes
            .get(&ObjectKey::cluster(name))
            .is_some_and(|c| ours(c))
    };
    if let Some(name) = src.ingress_class_name.as_deref() {
        return named(name);
    }
    if let Some(name) = src.annotations.get(INGRESS_CLASS_ANNOTATION) {
        return named(name);
    }
    settings.watch_ingress_without_class || classes.values().any(|c| c.is_default_class && ours(c))
}

/// The Service port a backend names; `None` (with a problem) for backends we cannot serve.
/// Invalid ones are already reported by validation.
fn backend_key(
    namespace: &Arc<str>,
    backend: &BackendSource,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<BackendKey> {
    if let Some(resource) = &backend.resource {
        if backend.service.is_none() {
            problems.push(Problem::new(
                format!("{field}.backend.resource"),
                ProblemReason::UnsupportedBackend,
                format!("resource backend {resource} is not supported: Portico routes only to Services; this path is skipped"),
            ));
        }
        return None;
    }
    let service = backend.service.as_ref()?;
    let port = match (service.port_number, &service.port_name) {
        (Some(n), _) => ServicePortRef::Number(u16::try_from(n).ok()?),
        (None, Some(name)) => ServicePortRef::Name(name.as_str().into()),
        (None, None) => return None,
    };
    Some(BackendKey {
        service: ObjectKey::new(namespace.clone(), service.name.as_str()),
        port,
    })
}
