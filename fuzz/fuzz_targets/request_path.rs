//! The request path canonicaliser (finding H4): never panics, and a path it accepts comes
//! out canonical (starts with `/`, no `//`, no dot segment) and stays the same when
//! normalised again; the path routes match has no parameters and is canonical too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proxy::fuzzing::{normalize_path, path_for_matching};

fn assert_canonical(path: &str, from: &str) {
    assert!(path.starts_with('/'), "{path:?} from {from:?}");
    assert!(!path.contains("//"), "{path:?} from {from:?}");
    assert!(
        !path.contains("/./") && !path.contains("/../"),
        "{path:?} from {from:?}"
    );
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "{path:?} from {from:?}"
    );
    assert!(!path.contains('\\'), "{path:?} from {from:?}");
}

fuzz_target!(|data: &[u8]| {
    // A request target reaches the canonicaliser as text (http::Uri has checked its bytes).
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(once) = normalize_path(path) else {
        return;
    };
    assert_canonical(&once, path);
    let twice = normalize_path(&once).expect("a canonical path is accepted again");
    assert_eq!(twice, once, "normalising is idempotent (from {path:?})");
    let matched = path_for_matching(&once);
    assert_canonical(&matched, path);
    assert!(!matched.contains(';'), "{matched:?} from {path:?}");
    assert_eq!(path_for_matching(&matched), matched, "from {path:?}");
    assert_eq!(
        normalize_path(&matched).expect("the matched path is canonical"),
        matched,
        "from {path:?}"
    );
});
