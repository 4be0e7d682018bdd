//! Ingress path matching.

/// Element-wise prefix match: `prefix` is stored without its trailing slash (`/` as ``).
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
