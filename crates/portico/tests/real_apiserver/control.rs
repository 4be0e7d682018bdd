//! kube-testenv's control port: the API server stops and starts over the same etcd, and an
//! etcd compaction expires older resourceVersions.

use std::time::Duration;

use crate::common::real_apiserver::RealApiServer;
use crate::common::wait_until;
use crate::{ok, run};

/// The control port kube-testenv gives tests: the API server stops and starts again on the same
/// address with etcd's data intact, and a compaction makes older resourceVersions 410 Gone.
#[test]
fn the_real_api_server_restarts_over_the_same_etcd_and_compaction_expires_old_versions() {
    let api = RealApiServer::start();
    ok(api.kubectl().args(["create", "namespace", "kept"]));
    let version = ok(api.kubectl().args([
        "get",
        "namespace",
        "kept",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]));

    api.stop_apiserver();
    let down = run(api.kubectl().args(["get", "namespace", "kept"]));
    assert!(!down.status.success(), "answered while stopped");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("connection to the server"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    api.start_apiserver();
    ok(api.kubectl().args(["get", "namespace", "kept"]));

    // A list at exactly that version is served until etcd is compacted past it.
    let exact = format!("/api/v1/namespaces?resourceVersion={version}&resourceVersionMatch=Exact");
    ok(api.kubectl().args(["get", "--raw", &exact]));
    ok(api.kubectl().args(["create", "namespace", "later"]));
    let revision = api.compact_etcd();
    assert!(revision > version.parse::<i64>().unwrap());
    // The API server learns of the compaction through compact_rev_key, as from its own
    // compactor; its watch cache drops older snapshots on its next poll (every 15 s).
    let stderr = wait_until(
        "410 for the compacted version",
        Duration::from_secs(40),
        || {
            let gone = run(api.kubectl().args(["get", "--raw", &exact]));
            (!gone.status.success()).then(|| String::from_utf8_lossy(&gone.stderr).into_owned())
        },
    );
    assert!(
        stderr.contains("Expired") || stderr.contains("too old"),
        "{stderr}"
    );
}
