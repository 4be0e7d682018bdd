//! deploy/: every manifest validates offline against Kubernetes 1.33 (kubernetes-validate
//! --strict), `kubectl kustomize` renders the base and the overlay, and real kubectl applies
//! the rendered base to the in-process API server (what it serves; the rest is listed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn output(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kustomize(dir: &Path) -> String {
    output(Command::new("kubectl").arg("kustomize").arg(dir))
}

fn validate(path: &Path) {
    let validator = root().join(".venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing: run tests/setup",
        validator.display()
    );
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}:\n{text}", path.display());
    assert!(
        !text.contains("ERROR") && !text.contains("Couldn't find schema"),
        "{}:\n{text}",
        path.display()
    );
    assert!(
        text.contains("passed"),
        "{}: nothing validated:\n{text}",
        path.display()
    );
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_manifest_validates_strictly_for_kubernetes_1_33() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    let manifests: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    assert!(manifests.len() >= 8, "{manifests:?}");
    for path in manifests {
        validate(path);
    }
    // And what kustomize makes of them.
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in [
        ("base", deploy()),
        ("overlay", deploy().join("overlays/example")),
    ] {
        let rendered = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&rendered, kustomize(&source)).unwrap();
        validate(&rendered);
    }
}

#[test]
fn kustomize_renders_what_the_issue_asks_for() {
    let rendered = kustomize(&deploy());
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} missing"))
    };
    let set = find("StatefulSet", "portico");
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    assert!(!set["spec"]["volumeClaimTemplates"][0].is_null());
    let pod = &set["spec"]["template"]["spec"];
    assert!(!pod["affinity"]["podAntiAffinity"].is_null());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(!container["resources"]["requests"].is_null());
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 45);
    assert_eq!(
        find("PodDisruptionBudget", "portico")["spec"]["maxUnavailable"],
        1
    );
    assert_eq!(
        find("Service", "portico-peers")["spec"]["clusterIP"],
        "None"
    );
    let lb = &find("Service", "portico")["spec"];
    assert_eq!(lb["type"], "LoadBalancer");
    assert_eq!(lb["externalTrafficPolicy"], "Local");
    let ports: BTreeSet<(u64, String)> = lb["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([(80, "TCP".into()), (443, "TCP".into()), (443, "UDP".into())])
    );
    assert_eq!(
        find("IngressClass", "portico")["spec"]["controller"],
        "portico.dev/ingress-controller"
    );
    // The one Lease by name for get/update; no Secret or key material anywhere.
    let role = find("Role", "portico-leader-election");
    assert_eq!(role["rules"][0]["resourceNames"][0], "portico-leader");
    assert!(!docs.iter().any(|d| d["kind"] == "Secret"));
    assert!(!rendered.contains("PRIVATE KEY"));
}

/// kubectl applies the rendered base to the in-process API server. It serves the kinds
/// Portico reads and writes (Namespace, Service, IngressClass, …) but not workload, policy
/// or RBAC kinds; those are listed exactly, so a change on either side shows here.
#[test]
fn kubectl_applies_the_rendered_base_to_the_in_process_api_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = portico_apiserver::ApiServer::builder()
        .minor_version(33)
        .build()
        .unwrap();
    let handle = runtime
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            server.serve(listener)
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    handle.write_kubeconfig(&kubeconfig).unwrap();
    let kubectl = |args: &[&str]| {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &kubeconfig).args(args);
        cmd
    };

    let served: BTreeSet<String> = output(&mut kubectl(&[
        "api-resources",
        "--no-headers",
        "-o",
        "wide",
    ]))
    .lines()
    .filter_map(|line| {
        // NAME [SHORTNAMES] APIVERSION NAMESPACED KIND VERBS...: the kind follows true/false.
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "true" || *w == "false")?;
        Some(words.get(at + 1)?.to_string())
    })
    .collect();
    let rendered = kustomize(&deploy());
    let mut accepted = Vec::new();
    let mut refused = BTreeSet::new();
    for doc in rendered.split("\n---\n") {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_owned();
        if served.contains(&kind) {
            accepted.push(doc.to_owned());
        } else {
            refused.insert(kind);
        }
    }
    assert_eq!(
        refused,
        BTreeSet::from(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "ServiceAccount",
                "StatefulSet"
            ]
            .map(String::from)
        ),
        "the in-process API server does not serve these kinds of deploy/ (served: {served:?})"
    );
    let file = dir.path().join("served.yaml");
    std::fs::write(&file, accepted.join("\n---\n")).unwrap();
    let applied = output(&mut kubectl(&["apply", "-f", file.to_str().unwrap()]));
    for expected in [
        "namespace/portico-system",
        "ingressclass.networking.k8s.io/portico",
        "service/portico-peers",
        "service/portico",
    ] {
        assert!(
            applied.contains(expected),
            "{expected} not applied:\n{applied}"
        );
    }
    // Applying again is a no-op, as on a real cluster.
    let again = output(&mut kubectl(&["apply", "-f", file.to_str().unwrap()]));
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");
    let ports = output(&mut kubectl(&[
        "-n",
        "portico-system",
        "get",
        "service",
        "portico",
        "-o",
        "jsonpath={range .spec.ports[*]}{.protocol}/{.port} {end}",
    ]));
    assert_eq!(ports.trim(), "TCP/80 TCP/443 UDP/443");

    // The whole rendered file: kubectl names exactly the unserved kinds. (Its client-side
    // validation of an unknown kind asks for CRDs, which this server does not serve either.)
    let all = dir.path().join("all.yaml");
    std::fs::write(&all, &rendered).unwrap();
    let out = kubectl(&["apply", "--validate=false", "-f", all.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for kind in &refused {
        assert!(
            stderr.contains(&format!("no matches for kind \"{kind}\"")),
            "{kind}: {stderr}"
        );
    }
    runtime.block_on(handle.shutdown());
}
