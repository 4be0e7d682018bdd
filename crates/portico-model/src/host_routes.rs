//! The routes of one host, indexed for lookup in time that depends on the request path's
//! depth, not on how many routes there are.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::key::ObjectKey;
use crate::problem::{Problem, ProblemReason};
use crate::route::{PathMatch, Route};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The routes of one host (or of one wildcard, or of "any host").
#[derive(Debug, Default)]
pub(crate) struct HostRoutes {
    routes: Vec<Route>,
    /// The field of each route's rule in its Ingress, for conflict messages.
    fields: Vec<Box<str>>,
    /// Exact paths, as written.
    exact: HashMap<Arc<str>, usize>,
    /// Prefix paths without their trailing slash (`/` is ``).
    prefix: HashMap<Arc<str>, usize>,
    /// Which lengths the prefix keys have (bit 63: 63 or longer), so that most candidate
    /// cuts of a request path are skipped without hashing or touching the map.
    prefix_lengths: u64,
    /// `use-regex` routes, longest literal prefix first, then by Ingress precedence.
    regex: Vec<usize>,
    /// Paths that lost to an older route with the same host, path and type.
    pub(crate) conflicts: Vec<(ObjectKey, Problem)>,
    /// The namespace that owns the host: its default backend answers unmatched paths.
    pub(crate) owner: Option<Arc<str>>,
}

/// Which rule wrote a route: for conflict messages.
pub(crate) struct Origin<'a> {
    pub ingress: &'a ObjectKey,
    pub field: &'a str,
}

impl HostRoutes {
    /// Adds routes in precedence order (oldest Ingress first, then rule order); a route whose
    /// host, path and type an earlier one already has is recorded as a conflict instead.
    pub(crate) fn push(&mut self, route: Route, origin: Origin<'_>) {
        let index = self.routes.len();
        let slot = match &route.path {
            PathMatch::Exact(p) => Some(self.exact.entry(p.clone())),
            PathMatch::Prefix(p) => {
                self.prefix_lengths |= length_bit(p.len());
                Some(self.prefix.entry(p.clone()))
            }
            PathMatch::Regex { .. } => None,
        };
        let existing = match slot {
            Some(Entry::Occupied(e)) => Some(*e.get()),
            Some(Entry::Vacant(e)) => {
                e.insert(index);
                None
            }
            None => self
                .regex
                .iter()
                .copied()
                .find(|&i| self.routes[i].path.to_string() == route.path.to_string()),
        };
        if let Some(winner) = existing {
            let winner_ingress = &self.routes[winner].ingress;
            let winner_field = &self.fields[winner];
            let by = if winner_ingress == origin.ingress {
                format!("{winner_field} of this Ingress")
            } else {
                format!("Ingress {winner_ingress} ({winner_field}), which is older")
            };
            let host = route.host.as_deref().unwrap_or("*");
            self.conflicts.push((
                origin.ingress.clone(),
                Problem::new(
                    origin.field,
                    ProblemReason::ConflictingRule,
                    format!(
                        "host {host:?} path {} is already routed by {by}; this path is skipped",
                        route.path
                    ),
                ),
            ));
            return;
        }
        if matches!(route.path, PathMatch::Regex { .. }) {
            self.regex.push(index);
        }
        self.fields.push(origin.field.into());
        self.routes.push(route);
    }

    /// Orders the regex routes; call once after the last `push`.
    pub(crate) fn finish(&mut self) {
        let routes = &self.routes;
        // Stable: equal lengths keep Ingress precedence order.
        self.regex
            .sort_by_key(|&i| std::cmp::Reverse(routes[i].path.precedence_len()));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.conflicts.is_empty()
    }

    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request path: the longest match (trailing slash stripped), then Exact
    /// over Prefix over regex, then the oldest Ingress.
    pub(crate) fn find(&self, path: &str) -> Option<&Route> {
        let best = self.find_exact_or_prefix(path);
        if self.regex.is_empty() {
            return best.map(|(_, i)| &self.routes[i]);
        }
        for &i in &self.regex {
            let route = &self.routes[i];
            if let Some((len, _)) = best
                && route.path.precedence_len() <= len
            {
                break;
            }
            if route.path.matches(path) {
                return Some(route);
            }
        }
        best.map(|(_, i)| &self.routes[i])
    }

    /// The best exact or prefix match with its precedence length. An exact match is never
    /// shorter than a prefix match, so it wins whenever there is one.
    fn find_exact_or_prefix(&self, path: &str) -> Option<(usize, usize)> {
        if let Some(&i) = self.exact.get(path) {
            return Some((self.routes[i].path.precedence_len(), i));
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Candidates are the path cut at each `/`, longest first: `/a/b/c`, `/a/b`, `/a`, ``.
        let mut candidate = path.strip_suffix('/').unwrap_or(path);
        loop {
            if self.prefix_lengths & length_bit(candidate.len()) != 0
                && let Some(&i) = self.prefix.get(candidate)
            {
                return Some((candidate.len(), i));
            }
            match candidate.rfind('/') {
                Some(cut) => candidate = &candidate[..cut],
                None => return None,
            }
        }
    }
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}
