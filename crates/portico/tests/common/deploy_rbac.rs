//! deploy/ rendered with `kubectl kustomize` (the one renderer the binary's tests use), and its
//! RBAC on a real API server: applied (less one rule, to show it is needed), and a kubeconfig
//! of its ServiceAccount `portico-system/portico`, so replicas run with exactly what deploy/
//! grants.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::real_apiserver::RealApiServer;

/// stdout of a command that must succeed.
pub fn ok(cmd: &mut Command) -> String {
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

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// A kustomization rendered by `kubectl kustomize`, as it prints it.
pub fn kustomize_text(path: &Path) -> String {
    ok(Command::new("kubectl").arg("kustomize").arg(path))
}

/// A kustomization rendered by `kubectl kustomize`, one value per object.
pub fn kustomize(path: &Path) -> Vec<serde_yaml::Value> {
    objects(&kustomize_text(path))
}

/// The objects of a YAML stream as kustomize prints it, one value per object.
pub fn objects(rendered: &str) -> Vec<serde_yaml::Value> {
    rendered
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect()
}

/// `objects` as one YAML stream.
pub fn to_yaml(objects: &[serde_yaml::Value]) -> String {
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect();
    yaml.join("---\n")
}

/// deploy/ rendered by kustomize, one value per object.
pub fn rendered_deploy() -> Vec<serde_yaml::Value> {
    kustomize(&deploy_dir())
}

/// A kubeconfig in `dir` with a fresh token of the ServiceAccount portico-system/portico.
pub fn service_account_kubeconfig(api: &RealApiServer, dir: &Path) -> PathBuf {
    let token = ok(api.kubectl().args([
        "-n",
        "portico-system",
        "create",
        "token",
        "portico",
        "--duration=1h",
    ]));
    let kubeconfig = dir.join("portico-sa.kubeconfig");
    api.write_kubeconfig_for_token(&kubeconfig, token.trim());
    kubeconfig
}

/// Applies deploy/ (less the `rule`th rule of `role`, if given) and returns a kubeconfig with a
/// fresh token of its ServiceAccount, checked to authenticate as that ServiceAccount.
pub fn deploy_and_service_account(
    api: &RealApiServer,
    dir: &Path,
    without: Option<(&str, usize)>,
) -> PathBuf {
    let mut objects = rendered_deploy();
    if let Some((role, rule)) = without {
        let object = objects
            .iter_mut()
            .find(|o| o["kind"] == role)
            .unwrap_or_else(|| panic!("deploy/ has no {role}"));
        let rules = object["rules"].as_sequence_mut().unwrap();
        assert!(rule < rules.len(), "{role} has {} rules", rules.len());
        rules.remove(rule);
    }
    let file = dir.join("deploy.yaml");
    std::fs::write(&file, to_yaml(&objects)).unwrap();
    ok(api
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&file));
    let kubeconfig = service_account_kubeconfig(api, dir);
    let whoami = ok(Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]));
    assert_eq!(whoami, "system:serviceaccount:portico-system:portico");
    kubeconfig
}

/// A 403 as a replica logs it: the API server's message ("... is forbidden: User ...") and
/// reason (`Forbidden`). Not the digits, which a timestamp can hold.
pub fn met_forbidden(logs: &str) -> bool {
    logs.to_ascii_lowercase().contains("forbidden")
}
