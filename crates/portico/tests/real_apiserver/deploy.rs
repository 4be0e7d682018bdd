//! deploy/ through real kubectl against the real API server: client-side apply, server-side
//! apply and the server dry run, with the real defaulting, validation and admission.

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::real_apiserver::RealApiServer;
use crate::{deploy_dir, ok, run};

/// The objects deploy/ renders, as kubectl names them in its reports
/// (`kind.group/name`, lower-case kind, no group for the core API).
fn deploy_objects() -> Vec<String> {
    let rendered = ok(Command::new("kubectl").arg("kustomize").arg(deploy_dir()));
    let objects: Vec<String> = rendered
        .split("\n---\n")
        .map(|doc| {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            let kind = value["kind"].as_str().unwrap().to_ascii_lowercase();
            let group = value["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map_or(String::new(), |(g, _)| format!(".{g}"));
            let name = value["metadata"]["name"].as_str().unwrap();
            format!("{kind}{group}/{name}")
        })
        .collect();
    assert!(objects.len() >= 10, "{objects:?}");
    objects
}

/// kubectl's report line for each object, and no line about anything else.
fn report_lines<'a>(report: &'a str, objects: &[String]) -> BTreeMap<String, &'a str> {
    let mut lines = BTreeMap::new();
    for line in report.lines() {
        let object = objects
            .iter()
            .find(|o| line.starts_with(&format!("{o} ")))
            .unwrap_or_else(|| panic!("unexpected line {line:?} in:\n{report}"));
        lines.insert(object.clone(), &line[object.len() + 1..]);
    }
    for object in objects {
        assert!(
            lines.contains_key(object),
            "{object} not reported:\n{report}"
        );
    }
    lines
}

/// resourceVersion of every object deploy/ renders, read back from the server.
fn resource_versions(api: &RealApiServer) -> BTreeMap<String, String> {
    let list = ok(api
        .kubectl()
        .args(["get", "-o", "json", "-k"])
        .arg(deploy_dir()));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                format!(
                    "{}/{}",
                    item["kind"].as_str().unwrap(),
                    item["metadata"]["name"].as_str().unwrap()
                ),
                item["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect()
}

/// `kubectl apply -k deploy/` as a user runs it: every object created, and a second apply
/// writes nothing. kubectl still says "configured" for two objects because its three-way
/// patch is never empty for them, though the server changes nothing: the
/// PodDisruptionBudget's `selector` is `patchStrategy: replace` (always sent whole) and the
/// StatefulSet's `volumeClaimTemplates` is a replaced list that the server defaults
/// (apiVersion, kind, volumeMode, status). The unchanged resourceVersions prove it.
#[test]
fn client_side_apply_of_deploy_is_admitted_and_a_second_apply_writes_nothing() {
    let api = RealApiServer::start();
    let objects = deploy_objects();
    let first = ok(api.kubectl().args(["apply", "-k"]).arg(deploy_dir()));
    for (object, outcome) in report_lines(&first, &objects) {
        assert_eq!(outcome, "created", "{object}:\n{first}");
    }
    let before = resource_versions(&api);
    assert_eq!(before.len(), objects.len(), "{before:?}");

    let second = ok(api.kubectl().args(["apply", "-k"]).arg(deploy_dir()));
    for (object, outcome) in report_lines(&second, &objects) {
        let patch_never_empty =
            object == "statefulset.apps/portico" || object == "poddisruptionbudget.policy/portico";
        let expected = if patch_never_empty {
            "configured"
        } else {
            "unchanged"
        };
        assert_eq!(outcome, expected, "{object}:\n{second}");
    }
    assert_eq!(resource_versions(&api), before, "the second apply wrote");
}

/// `--dry-run=server` admits every object through the real defaulting, validation and
/// admission; `--server-side` applies them all; a second server-side apply writes nothing and
/// `kubectl diff --server-side` finds no difference.
#[test]
fn server_dry_run_and_server_side_apply_of_deploy_admit_every_object() {
    let api = RealApiServer::start();
    let objects = deploy_objects();
    // A dry run creates nothing, so the namespaced objects need their namespace to exist
    // already, as in any real cluster.
    ok(api
        .kubectl()
        .args(["create", "namespace", "portico-system"]));
    let dry = ok(api
        .kubectl()
        .args(["apply", "--dry-run=server", "-k"])
        .arg(deploy_dir()));
    for (object, outcome) in report_lines(&dry, &objects) {
        let expected = if object == "namespace/portico-system" {
            "configured (server dry run)"
        } else {
            "created (server dry run)"
        };
        assert_eq!(outcome, expected, "{object}:\n{dry}");
    }
    // Nothing but the namespace exists after the dry run.
    let none = run(api
        .kubectl()
        .args(["get", "-n", "portico-system", "statefulset", "portico"]));
    assert!(!none.status.success());

    let applied = ok(api
        .kubectl()
        .args(["apply", "--server-side", "-k"])
        .arg(deploy_dir()));
    for (object, outcome) in report_lines(&applied, &objects) {
        assert_eq!(outcome, "serverside-applied", "{object}:\n{applied}");
    }
    let before = resource_versions(&api);
    assert_eq!(before.len(), objects.len(), "{before:?}");
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-k"])
        .arg(deploy_dir()));
    assert_eq!(resource_versions(&api), before, "the second apply wrote");
    let diff = run(api
        .kubectl()
        .args(["diff", "--server-side", "-k"])
        .arg(deploy_dir()));
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff found differences:\n{}\n{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}
