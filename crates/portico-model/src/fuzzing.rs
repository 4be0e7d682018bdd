//! Entry points for the fuzz targets in `fuzz/` (issue 14): the annotation reader is private
//! to the compiler, and the target should run it directly. Not an API: hidden from the
//! docs, and free to change with the targets.

use std::collections::BTreeMap;

use crate::{Problem, RoutePolicy, annotations};

/// What an Ingress's annotations say: its policy, whether its paths are regexes, and one
/// problem per invalid value.
pub fn parse_annotations(map: &BTreeMap<String, String>) -> (RoutePolicy, bool, Vec<Problem>) {
    let (parsed, problems) = annotations::parse(map);
    (parsed.policy, parsed.use_regex, problems)
}
