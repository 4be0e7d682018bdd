//! Issue 14's tenant attacks (C2, H1, H2, H3, M4 of shared/reviews/security.md) as a tenant
//! makes them: real kubectl with a ServiceAccount token bound to the built-in ClusterRole
//! `edit` in its own namespace only, against the real kube-apiserver, and checked over real
//! sockets with curl and openssl against a `portico run` replica running as deploy/'s
//! ServiceAccount. Tenant `alice` serves `shop.example` with her certificate; tenant `mallory`
//! then tries each attack in turn. Every step states the attack and what must hold, and fails
//! if the attack gets through. One API server and one replica for all steps (one `#[test]`,
//! its steps named), so the whole run stays well under 90 s.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::deploy_rbac::deploy_and_service_account;
use crate::common::real_apiserver::RealApiServer;
use crate::common::wait_until;
use crate::support::{Publish, Replica, backend_yaml, echo};
use crate::{apply_yaml, host_ip, ok, run};

const CLASS: &str = "portico";
/// Mallory's namespace quota for the flood (C2): a few of her ~50 KiB Secrets fit.
const NAMESPACE_BYTES: &str = "262144";
const WAIT: Duration = Duration::from_secs(30);

/// A tenant: a ServiceAccount `tenant` in `ns`, bound to ClusterRole `edit` there only, and
/// a token for it. Its kubectl carries the token on the command line and nothing else.
#[derive(Clone)]
struct Tenant {
    ns: &'static str,
    server: String,
    ca: PathBuf,
    token: String,
}

impl Tenant {
    fn mint(api: &RealApiServer, ns: &'static str) -> Self {
        let token =
            ok(api
                .kubectl()
                .args(["-n", ns, "create", "token", "tenant", "--duration=1h"]));
        let tenant = Self {
            ns,
            server: api.server.clone(),
            ca: api.ca.clone(),
            token: token.trim().to_owned(),
        };
        // The RoleBinding reaches the authorizer's cache a moment after it is created.
        wait_until(&format!("{ns}'s RoleBinding in force"), WAIT, || {
            let out = run(tenant.kubectl().args(["auth", "can-i", "patch", "secrets"]));
            (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
        });
        tenant
    }

    /// kubectl as this tenant in namespace `ns`.
    fn kubectl_in(&self, ns: &str) -> Command {
        let mut cmd = Command::new("kubectl");
        // No kubeconfig: the token and the server on the command line are all it has.
        cmd.env("KUBECONFIG", "/dev/null")
            .arg(format!("--server={}", self.server))
            .arg(format!("--certificate-authority={}", self.ca.display()))
            .arg(format!("--token={}", self.token))
            .args(["-n", ns]);
        cmd
    }

    fn kubectl(&self) -> Command {
        self.kubectl_in(self.ns)
    }

    /// `kubectl apply -f -` of `yaml` in namespace `ns`, as this tenant.
    fn try_apply_in(&self, ns: &str, yaml: &str) -> Output {
        let mut cmd = self.kubectl_in(ns);
        cmd.args(["apply", "--server-side", "--force-conflicts", "-f", "-"]);
        piped(&mut cmd, yaml)
    }

    fn apply(&self, yaml: &str) {
        let out = self.try_apply_in(self.ns, yaml);
        assert!(
            out.status.success(),
            "{} could not apply:\n{}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The reasons of the Events regarding `name` in its namespace, as the tenant reads them
    /// (core/v1 view, as `kubectl describe` shows them).
    fn event_reasons(&self, name: &str) -> String {
        ok(self.kubectl().args([
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ]))
    }

    fn wait_event(&self, name: &str, reason: &str) {
        wait_until(
            &format!("a {reason} Event on {}/{name}", self.ns),
            WAIT,
            || self.event_reasons(name).contains(reason).then_some(()),
        );
    }
}

/// Waits until the wall clock has left the second in which `tenant`'s `kind`/`name` was
/// created: creationTimestamp has a one-second resolution, so what is created next is
/// strictly newer (the API server stamps with this machine's clock).
fn past_the_creation_second(tenant: &Tenant, kind: &str, name: &str) {
    let created = ok(tenant.kubectl().args([
        "get",
        kind,
        name,
        "-o",
        "jsonpath={.metadata.creationTimestamp}",
    ]));
    let created: k8s_openapi::jiff::Timestamp = created
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("creationTimestamp {created:?}: {e}"));
    let second = u64::try_from(created.as_second()).expect("created after 1970");
    let next = std::time::UNIX_EPOCH + Duration::from_secs(second + 1);
    if let Ok(left) = next.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// Fills the built-in aggregated ClusterRole `name` (`view`, `edit`) with the rules of the
/// ClusterRoles its aggregationRule selects, as kube-controller-manager's
/// clusterrole-aggregation controller does in a cluster (kube-testenv runs no
/// controller-manager, so they start empty).
fn aggregate_role(api: &RealApiServer, name: &str) {
    let edit: serde_json::Value = serde_json::from_str(&ok(api.kubectl().args([
        "get",
        "clusterrole",
        name,
        "-o",
        "json",
    ])))
    .unwrap();
    let mut rules = Vec::new();
    for selector in edit["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .expect("edit is an aggregated ClusterRole")
    {
        let labels: Vec<String> = selector["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        let roles: serde_json::Value = serde_json::from_str(&ok(api.kubectl().args([
            "get",
            "clusterroles",
            "-l",
            &labels.join(","),
            "-o",
            "json",
        ])))
        .unwrap();
        for role in roles["items"].as_array().unwrap() {
            rules.extend(role["rules"].as_array().cloned().unwrap_or_default());
        }
    }
    assert!(!rules.is_empty(), "no ClusterRole aggregates into {name}");
    let patch = serde_json::json!({ "rules": rules }).to_string();
    ok(api
        .kubectl()
        .args(["patch", "clusterrole", name, "--type=merge", "-p", &patch]));
}

fn piped(cmd: &mut Command, input: &str) -> Output {
    portico_test_support::process::output_with_stdin(cmd, input.as_bytes())
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Namespaces, one ServiceAccount `tenant` each with a RoleBinding to ClusterRole `edit` in
/// its own namespace, our IngressClass, and each namespace's backend `test` (its Service and
/// the EndpointSlice an endpoints controller would write: `edit` may not write slices).
fn cluster_objects(ip: &str, alice_port: u16, mallory_port: u16) -> String {
    let mut yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: {CLASS}\nspec:\n  controller: portico.dev/ingress-controller\n"
    );
    for ns in ["alice", "mallory"] {
        yaml += &format!(
            r#"---
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: tenant
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: tenant-edit
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: edit
subjects:
- kind: ServiceAccount
  name: tenant
  namespace: {ns}
"#
        );
    }
    yaml += "---\n";
    yaml += &backend_yaml("alice", ip, alice_port);
    yaml += "---\n";
    yaml += &backend_yaml("mallory", ip, mallory_port);
    yaml
}

/// One path of a rule: (path, pathType, Service, port).
type Path<'a> = (String, &'a str, &'a str, u16);

/// An Ingress of our class: `tls` entries (hosts, Secret), then rules of (host, paths);
/// `annotations` as YAML lines.
fn ingress(
    name: &str,
    annotations: &[(&str, &str)],
    tls: &[(&[&str], &str)],
    rules: &[(&str, Vec<Path>)],
) -> String {
    let mut yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  annotations: {{}}\n"
    );
    if !annotations.is_empty() {
        yaml = yaml.replace("  annotations: {}\n", "  annotations:\n");
        for (k, v) in annotations {
            yaml += &format!("    {k}: {v:?}\n");
        }
    }
    yaml += &format!("spec:\n  ingressClassName: {CLASS}\n");
    if !tls.is_empty() {
        yaml += "  tls:\n";
        for (hosts, secret) in tls {
            yaml += &format!("  - hosts: {hosts:?}\n    secretName: {secret}\n");
        }
    }
    yaml += "  rules:\n";
    for (host, paths) in rules {
        yaml += &format!("  - host: {host}\n    http:\n      paths:\n");
        for (path, kind, service, port) in paths {
            yaml += &format!(
                "      - path: {path:?}\n        pathType: {kind}\n        backend:\n          service:\n            name: {service}\n            port:\n              number: {port}\n"
            );
        }
    }
    yaml
}

/// `/` (Prefix) of `host` to the tenant's `test` Service.
fn simple(name: &str, host: &str, tls: &[(&[&str], &str)]) -> String {
    ingress(
        name,
        &[],
        tls,
        &[(host, vec![("/".into(), "Prefix", "test", 80)])],
    )
}

/// A self-signed certificate for `sans`: (certificate PEM, key PEM).
fn certificate(sans: &[&str]) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(sans).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A kubernetes.io/tls Secret `name` holding `cert` (with `padding` bytes of text after its
/// PEM block, as a flood would add) and `key`.
fn tls_secret(name: &str, cert: &str, key: &str, padding: usize, seed: usize) -> String {
    let mut crt = cert.to_owned();
    if padding > 0 {
        let line = format!("junk {seed} ");
        crt += &line.repeat(padding / line.len() + 1)[..padding];
        crt += "\n";
    }
    // stringData as literal blocks: the API server stores them as data.
    let block = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        block(&crt),
        block(key)
    )
}

/// The port of `addr` (`127.0.0.1:PORT`).
fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

/// (status, echo namespace or body) of a curl request to `scheme://host:PORT/path`, the name
/// resolved to the replica's listener (`--resolve`), SNI and Host both `host`.
fn fetch(listener: &str, scheme: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let port = port(listener);
    let out = run(Command::new("curl")
        .args(["-sS", "-k", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("{scheme}://{host}:{port}{path}")));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.parse().ok()?;
    let who = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["namespace"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    Some((code, who))
}

/// The SHA-256 fingerprint of the certificate the HTTPS listener serves for SNI `sni`, as
/// `openssl s_client` receives it.
fn served_fingerprint(https: &str, sni: &str) -> Option<String> {
    let out = run(Command::new("openssl")
        .args(["s_client", "-connect", https, "-servername", sni])
        .stdin(Stdio::null()));
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    pem.contains("BEGIN CERTIFICATE")
        .then(|| fingerprint(&pem))
        .filter(|f| !f.is_empty())
}

/// The SHA-256 fingerprint of the first certificate in `pem`, by `openssl x509`.
fn fingerprint(pem: &str) -> String {
    let out = piped(
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256"]),
        pem,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Asserts every path of shop.example, over HTTP and HTTPS, is answered by alice's backend
/// with alice's certificate; `step` names the attack in the failure.
fn alice_answers(replica: &Replica, alice_fp: &str, step: &str) {
    let https = replica.https.as_deref().unwrap();
    for path in ["/", "/checkout", "/checkout/pay", "/admin/x"] {
        for (scheme, listener) in [("http", replica.http.as_str()), ("https", https)] {
            let got = fetch(listener, scheme, "shop.example", path);
            assert_eq!(
                got,
                Some((200, "alice".to_owned())),
                "{step}: {scheme}://shop.example{path} must be alice's backend"
            );
        }
    }
    assert_eq!(
        served_fingerprint(https, "shop.example").as_deref(),
        Some(alice_fp),
        "{step}: shop.example must be served with alice's certificate"
    );
}

/// A listener on 127.0.0.1 that counts the connections it accepts: where an `ExternalName`
/// to loopback would land.
fn connection_recorder() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nrecorder");
        }
    });
    (port, count)
}

#[test]
fn a_tenant_with_edit_rights_cannot_take_hosts_certificates_catch_alls_loopback_or_the_control_plane()
 {
    let started = Instant::now();
    let api = RealApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = deploy_and_service_account(&api, dir.path(), None);
    let ip = host_ip();
    let (_alice_echo, _, alice_port) = echo("alice");
    let (_mallory_echo, _, mallory_port) = echo("mallory");
    apply_yaml(
        &api,
        dir.path(),
        "tenants.yaml",
        &cluster_objects(&ip, alice_port, mallory_port),
    );
    // ExternalName allowed, so H2's connect-time guard is what is tested (off, they are
    // refused outright); mallory's namespace quota small enough for the C2 flood to meet it.
    let mut replica = Replica::single(
        dir.path(),
        &kubeconfig,
        Publish::StatusAddress(&ip),
        true,
        &[
            "--allow-external-name-services",
            "--max-namespace-bytes",
            NAMESPACE_BYTES,
        ],
    );
    // view first: edit aggregates it (kube-controller-manager's order of events too).
    aggregate_role(&api, "view");
    aggregate_role(&api, "edit");
    let alice = Tenant::mint(&api, "alice");
    let mallory = Tenant::mint(&api, "mallory");

    // The RBAC is real: mallory's token is refused in alice's namespace (403 Forbidden).
    let refused = mallory.try_apply_in("alice", &simple("steal", "shop.example", &[]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("forbidden"),
        "mallory must be refused in alice's namespace: {stderr}"
    );
    let listed = run(mallory.kubectl_in("alice").args(["get", "ingresses"]));
    assert!(
        !listed.status.success() && String::from_utf8_lossy(&listed.stderr).contains("forbidden"),
        "mallory must not list alice's Ingresses"
    );

    // Alice serves shop.example with her certificate.
    let (alice_crt, alice_key) = certificate(&["shop.example"]);
    let alice_fp = fingerprint(&alice_crt);
    alice.apply(&tls_secret("shop-tls", &alice_crt, &alice_key, 0, 0));
    // Plain HTTP served too (no redirect), so both listeners show who answers.
    alice.apply(&ingress(
        "shop",
        &[("nginx.ingress.kubernetes.io/ssl-redirect", "false")],
        &[(&["shop.example"], "shop-tls")],
        &[("shop.example", vec![("/".into(), "Prefix", "test", 80)])],
    ));
    wait_until(
        "alice's shop.example over HTTPS",
        Duration::from_secs(60),
        || {
            replica.logs();
            let https = replica.https.as_deref().unwrap();
            (fetch(https, "https", "shop.example", "/") == Some((200, "alice".into()))
                && served_fingerprint(https, "shop.example").as_deref() == Some(&alice_fp))
            .then_some(())
        },
    );
    alice_answers(&replica, &alice_fp, "before any attack");
    // creationTimestamp has a one-second resolution: mallory's objects are clearly newer.
    past_the_creation_second(&alice, "ingress", "shop");

    // H3 host takeover. Mallory's Ingress claims shop.example, with the same path and a
    // longer, more specific one. Must hold: alice answers every path, HTTP and HTTPS, and
    // mallory's Ingress gets a HostOwnedByAnotherNamespace Event (mallory can read it).
    mallory.apply(&ingress(
        "steal",
        &[],
        &[],
        &[(
            "shop.example",
            vec![
                ("/".into(), "Prefix", "test", 80),
                ("/checkout/pay".into(), "Prefix", "test", 80),
                ("/checkout".into(), "Exact", "test", 80),
            ],
        )],
    ));
    mallory.wait_event("steal", "HostOwnedByAnotherNamespace");
    alice_answers(&replica, &alice_fp, "H3 host takeover");

    // H1/H3 certificate takeover. Mallory's Secret has SANs *.example and shop.example (and
    // her own claim.mallory.example); her Ingress lists only other.example in tls.hosts with
    // it. Must hold: other.example gets her certificate (the Secret is live), shop.example
    // still gets alice's.
    let (wild_crt, wild_key) = certificate(&["*.example", "shop.example", "claim.mallory.example"]);
    let wild_fp = fingerprint(&wild_crt);
    mallory.apply(&tls_secret("wild-tls", &wild_crt, &wild_key, 0, 0));
    mallory.apply(&simple(
        "cert-grab",
        "other.example",
        &[(&["other.example"], "wild-tls")],
    ));
    let https = replica.https.clone().unwrap();
    wait_until("mallory's other.example live", WAIT, || {
        (served_fingerprint(&https, "other.example").as_deref() == Some(&wild_fp)
            && fetch(&https, "https", "other.example", "/") == Some((200, "mallory".into())))
        .then_some(())
    });
    alice_answers(&replica, &alice_fp, "H1/H3 certificate takeover");
    // The same Secret, and this time shop.example itself listed in tls.hosts (with a rule
    // only for her own host). Must hold: shop.example still gets alice's certificate, and
    // her Ingress is told so (nothing protective is silently ignored).
    mallory.apply(&simple(
        "cert-claim",
        "claim.mallory.example",
        &[(&["shop.example", "claim.mallory.example"], "wild-tls")],
    ));
    wait_until("mallory's cert-claim live", WAIT, || {
        (fetch(&https, "https", "claim.mallory.example", "/") == Some((200, "mallory".into())))
            .then_some(())
    });
    alice_answers(
        &replica,
        &alice_fp,
        "H1/H3 certificate claimed in tls.hosts",
    );
    mallory.wait_event("cert-claim", "HostOwnedByAnotherNamespace");

    // H3 catch-all. Mallory's Ingress has only a defaultBackend. Must hold: it answers
    // neither alice's host nor an unknown host (Portico's own 404), with a CatchAllNotAllowed
    // Event.
    mallory.apply(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: catch\nspec:\n  ingressClassName: {CLASS}\n  defaultBackend:\n    service:\n      name: test\n      port:\n        number: 80\n"
    ));
    mallory.wait_event("catch", "CatchAllNotAllowed");
    for scheme in ["http", "https"] {
        let listener = if scheme == "http" {
            &replica.http
        } else {
            &https
        };
        let (code, who) = fetch(listener, scheme, "unknown.example", "/anything").unwrap();
        assert_eq!(
            code, 404,
            "H3 catch-all: unknown host answered {code} by {who}"
        );
        assert_ne!(
            who, "mallory",
            "H3 catch-all: mallory's defaultBackend answered"
        );
    }
    alice_answers(&replica, &alice_fp, "H3 catch-all");

    // H3 regex precedence. Mallory's use-regex Ingresses with a very long pattern, one on
    // shop.example (refused: the host is alice's) and one on her own host (served there
    // only). Must hold: alice answers every path of shop.example.
    let long = format!("/{}.*", "(?:x)?".repeat(150));
    let regex = [("nginx.ingress.kubernetes.io/use-regex", "true")];
    let regex_paths = |host| {
        (
            host,
            vec![(long.clone(), "ImplementationSpecific", "test", 80)],
        )
    };
    mallory.apply(&ingress(
        "regex-steal",
        &regex,
        &[],
        &[regex_paths("shop.example")],
    ));
    mallory.apply(&ingress(
        "regex-own",
        &regex,
        &[],
        &[regex_paths("mallory.example")],
    ));
    mallory.wait_event("regex-steal", "HostOwnedByAnotherNamespace");
    wait_until("mallory's own regex host served", WAIT, || {
        (fetch(&replica.http, "http", "mallory.example", "/shop") == Some((200, "mallory".into())))
            .then_some(())
    });
    alice_answers(&replica, &alice_fp, "H3 regex precedence");

    // M4 regex limits. One pattern over the size limit, one Ingress over the count limit.
    // Must hold: both refused with RegexLimitExceeded, their hosts unrouted, alice unaffected.
    let huge = format!("/{}.*", "(?:x)?".repeat(250));
    mallory.apply(&ingress(
        "regex-huge",
        &regex,
        &[],
        &[(
            "huge.mallory.example",
            vec![(huge, "ImplementationSpecific", "test", 80)],
        )],
    ));
    let many: Vec<_> = (0..101)
        .map(|i| (format!("/p{i}/.*"), "ImplementationSpecific", "test", 80))
        .collect();
    mallory.apply(&ingress(
        "regex-many",
        &regex,
        &[],
        &[("many.mallory.example", many)],
    ));
    mallory.wait_event("regex-huge", "RegexLimitExceeded");
    mallory.wait_event("regex-many", "RegexLimitExceeded");
    for (host, path) in [
        ("huge.mallory.example", "/x"),
        ("many.mallory.example", "/p1/x"),
    ] {
        let got = fetch(&replica.http, "http", host, path).map(|(code, _)| code);
        assert_eq!(got, Some(404), "M4: {host} must not be routed");
    }
    alice_answers(&replica, &alice_fp, "M4 regex limits");

    // H2 ExternalName. Mallory's ExternalName Services point at localhost and 127.0.0.1 (a
    // listener that records connections), the cloud metadata address and the replica's own
    // admin port, one Ingress path each. Must hold: each request gets an error status, no
    // connection reaches the recorder, the admin page never answers, and the refusal is
    // explained (an ExternalNameNotAllowed Event for IP literals, the replica's log for names).
    let (recorder_port, connections) = connection_recorder();
    let admin_port: u16 = port(&replica.admin).parse().unwrap();
    let targets = [
        ("ext-localhost", "localhost", recorder_port),
        ("ext-loopback", "127.0.0.1", recorder_port),
        ("ext-metadata", "169.254.169.254", 80),
        ("ext-admin", "localhost", admin_port),
        ("ext-admin-ip", "127.0.0.1", admin_port),
    ];
    let mut yaml = String::new();
    for (name, external, port) in targets {
        yaml += &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: ExternalName\n  externalName: {external}\n  ports:\n  - port: {port}\n---\n"
        );
    }
    let paths = targets
        .iter()
        .map(|(name, _, port)| (format!("/{name}"), "Prefix", *name, *port))
        .collect();
    yaml += &ingress("ssrf", &[], &[], &[("ssrf.mallory.example", paths)]);
    mallory.apply(&yaml);
    mallory.wait_event("ssrf", "ExternalNameNotAllowed");
    for (name, external, _) in targets {
        let (code, body) = fetch(
            &replica.http,
            "http",
            "ssrf.mallory.example",
            &format!("/{name}"),
        )
        .unwrap_or_else(|| panic!("H2: no answer for {name}"));
        assert!(
            (500..600).contains(&code),
            "H2: ExternalName {external} ({name}) answered {code}: {body}"
        );
        eprintln!("H2: ExternalName {external} ({name}): {code}");
        assert!(
            !body.contains("recorder") && !body.contains("controller:"),
            "H2: {name} reached {external}: {body}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "H2: an ExternalName request reached the loopback listener"
    );
    assert!(
        replica.logs().contains("ExternalName refused"),
        "H2: the refusal of `localhost` is logged"
    );
    alice_answers(&replica, &alice_fp, "H2 ExternalName");

    // C2 control-plane flood. Mallory references 20 TLS Secrets from an Ingress and rewrites
    // them as fast as kubectl goes for a few seconds: alternately ~100 KiB (over the 64 KiB
    // a TLS Secret may hold) and ~50 KiB (under it, but together past her namespace quota),
    // with an Ingress carrying a ~110 KiB annotation (over the per-object limit). Must hold:
    // each refused with an Event (SecretTooLarge, NamespaceQuotaExceeded, ObjectTooLarge),
    // while alice's new Ingress made during the flood is served within 20 s, and
    // shop.example is untouched.
    let flood_hosts: Vec<String> = (0..20).map(|i| format!("f{i}.mallory.example")).collect();
    let flood_tls: Vec<(Vec<&str>, String)> = flood_hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (vec![h.as_str()], format!("flood-{i}")))
        .collect();
    let tls: Vec<(&[&str], &str)> = flood_tls
        .iter()
        .map(|(h, s)| (h.as_slice(), s.as_str()))
        .collect();
    mallory.apply(&simple("flood", "f0.mallory.example", &tls));
    let stop = Arc::new(AtomicBool::new(false));
    // Rounds kubectl has applied so far.
    let applied = Arc::new(AtomicUsize::new(0));
    let flooder = {
        let (stop, mallory, applied) = (stop.clone(), mallory.clone(), applied.clone());
        let (crt, key) = certificate(&["f0.mallory.example"]);
        std::thread::spawn(move || {
            let flood_started = Instant::now();
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) || rounds == 0 {
                let mut yaml: Vec<String> = (0..20)
                    .map(|i| {
                        let padding = if i % 2 == 0 { 100 << 10 } else { 50 << 10 };
                        tls_secret(&format!("flood-{i}"), &crt, &key, padding, rounds)
                    })
                    .collect();
                let junk = format!("{rounds} ").repeat(110 << 10 >> 1);
                yaml.push(ingress(
                    "flood-big",
                    &[("mallory.example/junk", &junk)],
                    &[],
                    &[(
                        "big.mallory.example",
                        vec![("/".into(), "Prefix", "test", 80)],
                    )],
                ));
                mallory.apply(&yaml.join("---\n"));
                rounds += 1;
                applied.store(rounds, Ordering::SeqCst);
                if flood_started.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            (rounds, flood_started.elapsed())
        })
    };
    let flood_rounds = |at_least: usize| {
        wait_until(&format!("{at_least} flood rounds applied"), WAIT, || {
            (applied.load(Ordering::SeqCst) >= at_least).then_some(())
        })
    };
    // Alice's change goes in while the flood is under way...
    flood_rounds(1);
    alice.apply(&simple("late", "new.alice.example", &[]));
    let applied_at = Instant::now();
    wait_until(
        "alice's new Ingress during the flood",
        Duration::from_secs(20),
        || {
            (fetch(&replica.http, "http", "new.alice.example", "/") == Some((200, "alice".into())))
                .then_some(())
        },
    );
    let delay = applied_at.elapsed();
    // ...and the flood goes on after it was served: one more round at least.
    flood_rounds((applied.load(Ordering::SeqCst) + 1).max(2));
    stop.store(true, Ordering::SeqCst);
    let (rounds, flood_for) = flooder.join().unwrap();
    assert!(
        rounds >= 2,
        "C2: the flood rewrote its Secrets only {rounds} times"
    );
    eprintln!(
        "C2: alice's new Ingress served {:.2} s after kubectl apply returned, during a flood of \
         {rounds} rounds x (20 Secrets and a ~110 KiB Ingress) in {:.1} s",
        delay.as_secs_f64(),
        flood_for.as_secs_f64()
    );
    let reasons = || {
        ok(mallory.kubectl().args([
            "get",
            "events",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name} {.reason}{\"\\n\"}{end}",
        ]))
    };
    let refused = std::cell::RefCell::new(String::new());
    let both = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the flood's refusals as Events", WAIT, || {
            *refused.borrow_mut() = reasons();
            let r = refused.borrow();
            ["SecretTooLarge", "NamespaceQuotaExceeded", "ObjectTooLarge"]
                .iter()
                .all(|reason| r.contains(reason))
                .then_some(())
        })
    }));
    let refused = refused.into_inner();
    if both.is_err() {
        let log: Vec<String> = replica
            .logs()
            .lines()
            .filter(|l| l.contains("refused") || l.contains("flood"))
            .map(str::to_owned)
            .collect();
        panic!(
            "C2: mallory's Events:\n{refused}\nthe replica's log:\n{}",
            log.join("\n")
        );
    }
    eprintln!("C2: mallory's Events after the flood:\n{refused}");
    let big = fetch(&replica.http, "http", "big.mallory.example", "/").map(|(code, _)| code);
    assert_eq!(
        big,
        Some(404),
        "C2: the over-limit Ingress must not be routed"
    );
    alice_answers(&replica, &alice_fp, "C2 flood");
    replica.assert_no_403("the replica as deploy/'s ServiceAccount");
    eprintln!(
        "tenant attacks: every step held, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
