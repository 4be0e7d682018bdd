//! Conversion of Kubernetes objects (k8s-openapi types and YAML manifests) to the model's
//! inputs.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use portico_model::convert::{self, ConvertError};
use portico_model::{
    BackendSource, EndpointPortSource, EndpointSliceSource, EndpointSource, HttpPathSource,
    IngressClassSource, IngressRuleSource, IngressSource, IngressTlsSource, ObjectKey, Resource,
    ResourceKind, ServiceBackendSource, ServicePortSource, ServiceSource, TargetPort, validate,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The documents of a (multi-document) YAML manifest, as JSON values.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .collect()
}

fn convert_yaml(text: &str) -> Result<Vec<Resource>, ConvertError> {
    convert::resources_from_values(&yaml_documents(text))
}

fn only_ingress(resources: &[Resource]) -> &IngressSource {
    match resources {
        [Resource::Ingress(ing)] => ing,
        other => panic!("expected exactly one Ingress, got {other:#?}"),
    }
}

fn service_backend(name: &str, number: Option<i32>, port_name: Option<&str>) -> BackendSource {
    BackendSource {
        service: Some(ServiceBackendSource {
            name: name.into(),
            port_name: port_name.map(Into::into),
            port_number: number,
        }),
        resource: None,
    }
}

fn path(path: &str, path_type: &str, backend: BackendSource) -> HttpPathSource {
    HttpPathSource {
        path: Some(path.into()),
        path_type: Some(path_type.into()),
        backend,
    }
}

/// (host, path, pathType, service) of every path of an Ingress, in order.
fn flat_paths(ing: &IngressSource) -> Vec<(String, String, String, String)> {
    ing.rules
        .iter()
        .flat_map(|rule| {
            rule.http.iter().flatten().map(move |p| {
                (
                    rule.host.clone().unwrap_or_default(),
                    p.path.clone().unwrap_or_default(),
                    p.path_type.clone().unwrap_or_default(),
                    p.backend.service.as_ref().unwrap().name.clone(),
                )
            })
        })
        .collect()
}

#[test]
fn conformance_manifests() {
    let dir = portico_test_support::testdata("manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests missing in {dir:?}");
    for file in &files {
        let name = file.file_stem().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let resources =
            convert_yaml(&text).unwrap_or_else(|e| panic!("{name}: conversion failed: {e}"));
        let ing = only_ingress(&resources);
        assert_eq!(&*ing.key.namespace, "default", "{name}");
        // Everything the conformance suite creates must pass the API server's checks.
        assert_eq!(validate::ingress(ing), vec![], "{name}");
        let p = |host: &str, path: &str, ty: &str, svc: &str| {
            (host.into(), path.into(), ty.into(), svc.into())
        };
        match name {
            "default-backend" | "load-balancing" => {
                assert_eq!(&*ing.key.name, name);
                assert!(ing.rules.is_empty() && ing.tls.is_empty());
                assert_eq!(
                    ing.default_backend,
                    Some(service_backend("echo-service", Some(8080), None))
                );
            }
            "host-rules" => {
                assert_eq!(
                    ing.tls,
                    [IngressTlsSource {
                        hosts: vec!["foo.bar.com".into()],
                        secret_name: Some("conformance-tls".into()),
                    }]
                );
                assert_eq!(
                    flat_paths(ing),
                    [
                        p("*.foo.com", "/", "Prefix", "wildcard-foo-com"),
                        p("foo.bar.com", "/", "Prefix", "foo-bar-com"),
                    ]
                );
                assert_eq!(
                    ing.rules[1].http.as_ref().unwrap()[0].backend,
                    service_backend("foo-bar-com", None, Some("http"))
                );
            }
            "ingress-class" => {
                assert_eq!(&*ing.key.name, "test-ingress-class");
                assert_eq!(
                    ing.ingress_class_name.as_deref(),
                    Some("some-invalid-class-name")
                );
                assert_eq!(
                    flat_paths(ing),
                    [p("ingress-class", "/", "Prefix", "ingress-class-prefix")]
                );
            }
            "path-rules" => {
                assert_eq!(ing.ingress_class_name, None);
                assert_eq!(
                    flat_paths(ing),
                    [
                        p("exact-path-rules", "/foo", "Exact", "foo-exact"),
                        p("prefix-path-rules", "/foo", "Prefix", "foo-prefix"),
                        p(
                            "prefix-path-rules",
                            "/aaa/bbb",
                            "Prefix",
                            "aaa-slash-bbb-prefix"
                        ),
                        p("prefix-path-rules", "/aaa", "Prefix", "aaa-prefix"),
                        p("mixed-path-rules", "/foo", "Prefix", "foo-prefix"),
                        p("mixed-path-rules", "/foo", "Exact", "foo-exact"),
                        p(
                            "trailing-slash-path-rules",
                            "/aaa/bbb/",
                            "Prefix",
                            "aaa-slash-bbb-slash-prefix"
                        ),
                        p(
                            "trailing-slash-path-rules",
                            "/foo/",
                            "Exact",
                            "foo-slash-exact"
                        ),
                    ]
                );
            }
            other => {
                // A manifest added later: at least it must route something.
                assert!(
                    !ing.rules.is_empty() || ing.default_backend.is_some(),
                    "{other}"
                );
            }
        }
    }
}

/// The `minimal-ingress` example of the Kubernetes Ingress documentation.
const MINIMAL_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: minimal-ingress
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  ingressClassName: nginx-example
  rules:
  - http:
      paths:
      - path: /testpath
        pathType: Prefix
        backend:
          service:
            name: test
            port:
              number: 80
"#;

#[test]
fn kubernetes_docs_minimal_ingress() {
    let resources = convert_yaml(MINIMAL_INGRESS).unwrap();
    let expected = IngressSource {
        key: ObjectKey::new("default", "minimal-ingress"),
        annotations: BTreeMap::from([(
            "nginx.ingress.kubernetes.io/rewrite-target".to_owned(),
            "/".to_owned(),
        )]),
        ingress_class_name: Some("nginx-example".into()),
        rules: vec![IngressRuleSource {
            host: None,
            http: Some(vec![path(
                "/testpath",
                "Prefix",
                service_backend("test", Some(80), None),
            )]),
        }],
        ..Default::default()
    };
    assert_eq!(only_ingress(&resources), &expected);
    assert_eq!(resources[0].kind(), ResourceKind::Ingress);
    assert_eq!(validate::ingress(&expected), vec![]);

    // The same object through k8s-openapi's type and the `From` impl.
    let typed: Ingress = serde_json::from_value(yaml_documents(MINIMAL_INGRESS).remove(0)).unwrap();
    assert_eq!(IngressSource::from(&typed), expected);
}

const CLUSTER_OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: apps
  creationTimestamp: "2024-01-02T03:04:05Z"
spec:
  type: ClusterIP
  selector:
    app: echo
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: grpc
    port: 9000
    protocol: TCP
    targetPort: grpc-port
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-abc12
  namespace: apps
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["10.1.0.5"]
  conditions:
    ready: true
    serving: true
    terminating: false
  targetRef:
    kind: Pod
    name: echo-7d9f-abcde
    namespace: apps
- addresses: ["10.1.0.6"]
  conditions:
    ready: false
    terminating: true
- addresses: ["10.1.0.7"]
---
apiVersion: v1
kind: Secret
metadata:
  name: echo-tls
  namespace: apps
type: kubernetes.io/tls
data:
  tls.crt: Y2VydC1ieXRlcy1QVUJMSUM=
  tls.key: S0VZTUFURVJJQUwtZG8tbm90LWxvZw==
---
# An empty document and kinds routing ignores are skipped.
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  a: b
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: not-a-core-service
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: portico
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: portico.dev/ingress-controller
"#;

#[test]
fn service_endpointslice_secret_and_class() {
    let resources = convert_yaml(CLUSTER_OBJECTS).unwrap();
    let kinds: Vec<ResourceKind> = resources.iter().map(Resource::kind).collect();
    assert_eq!(
        kinds,
        [
            ResourceKind::Service,
            ResourceKind::EndpointSlice,
            ResourceKind::Secret,
            ResourceKind::IngressClass
        ]
    );

    let Resource::Service(service) = &resources[0] else {
        unreachable!()
    };
    assert_eq!(
        **service,
        ServiceSource {
            key: ObjectKey::new("apps", "echo"),
            type_: Some("ClusterIP".into()),
            external_name: None,
            ports: vec![
                ServicePortSource {
                    name: Some("http".into()),
                    port: 80,
                    protocol: None,
                    target_port: Some(TargetPort::Number(8080)),
                },
                ServicePortSource {
                    name: Some("grpc".into()),
                    port: 9000,
                    protocol: Some("TCP".into()),
                    target_port: Some(TargetPort::Name("grpc-port".into())),
                },
            ],
        }
    );

    let Resource::EndpointSlice(slice) = &resources[1] else {
        unreachable!()
    };
    assert_eq!(
        **slice,
        EndpointSliceSource {
            key: ObjectKey::new("apps", "echo-abc12"),
            service_name: Some("echo".into()),
            address_type: "IPv4".into(),
            ports: vec![EndpointPortSource {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
            }],
            endpoints: vec![
                EndpointSource {
                    addresses: vec!["10.1.0.5".into()],
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                    target_name: Some("echo-7d9f-abcde".into()),
                },
                EndpointSource {
                    addresses: vec!["10.1.0.6".into()],
                    ready: Some(false),
                    serving: None,
                    terminating: Some(true),
                    target_name: None,
                },
                EndpointSource {
                    addresses: vec!["10.1.0.7".into()],
                    ..Default::default()
                },
            ],
        }
    );

    let Resource::Secret(secret) = &resources[2] else {
        unreachable!()
    };
    assert_eq!(secret.key, ObjectKey::new("apps", "echo-tls"));
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.tls_crt.as_deref(), Some(&b"cert-bytes-PUBLIC"[..]));
    assert_eq!(
        secret.tls_key.as_deref(),
        Some(&b"KEYMATERIAL-do-not-log"[..])
    );

    let Resource::IngressClass(class) = &resources[3] else {
        unreachable!()
    };
    assert_eq!(
        **class,
        IngressClassSource {
            key: ObjectKey::cluster("portico"),
            controller: "portico.dev/ingress-controller".into(),
            is_default_class: true,
        }
    );
}

#[test]
fn creation_timestamp_and_identity() {
    let value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "stamped", "namespace": "team-a", "uid": "1234-abcd", "generation": 3,
            "creationTimestamp": "2024-01-02T03:04:05Z"
        },
        "spec": {"defaultBackend": {"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "static"}}}
    });
    let Some(Resource::Ingress(ing)) = convert::resource_from_value(&value).unwrap() else {
        panic!("not an Ingress")
    };
    assert_eq!(ing.key, ObjectKey::new("team-a", "stamped"));
    assert_eq!(ing.uid.as_deref(), Some("1234-abcd"));
    assert_eq!(ing.generation, Some(3));
    assert_eq!(ing.creation_timestamp, Some(1_704_164_645));
    assert_eq!(
        ing.default_backend,
        Some(BackendSource {
            service: None,
            resource: Some("StorageBucket/static".into()),
        })
    );
}

#[test]
fn class_without_default_annotation_and_lists() {
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
             "metadata": {"name": "other", "annotations": {"ingressclass.kubernetes.io/is-default-class": "yes"}},
             "spec": {"controller": "example.com/other"}},
            {"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                 "spec": {"type": "ExternalName", "externalName": "example.org"}}
            ]},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ignored"}}
        ]
    });
    let resources = convert::resources_from_value(&list).unwrap();
    assert_eq!(resources.len(), 2, "{resources:#?}");
    let Resource::IngressClass(class) = &resources[0] else {
        unreachable!()
    };
    assert!(
        !class.is_default_class,
        "only \"true\" marks the default class"
    );
    assert_eq!(class.key.namespace.as_ref(), "");
    let Resource::Service(ext) = &resources[1] else {
        unreachable!()
    };
    assert_eq!(ext.key, ObjectKey::new("default", "ext"));
    assert_eq!(ext.external_name.as_deref(), Some("example.org"));

    // One object at a time: a List is not one object.
    let err = convert::resource_from_value(&list).unwrap_err();
    assert!(matches!(err, ConvertError::UnexpectedList { .. }), "{err}");

    // The same List written as YAML.
    let yaml = serde_yaml::to_string(&list).unwrap();
    assert_eq!(convert_yaml(&yaml).unwrap(), resources);
}

#[test]
fn string_data_overrides_data() {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "n"},
        "data": {"tls.crt": "Y2VydC1ieXRlcy1QVUJMSUM=", "tls.key": "b2xk"},
        "stringData": {"tls.key": "new-key"}
    });
    let Some(Resource::Secret(s)) = convert::resource_from_value(&secret).unwrap() else {
        panic!()
    };
    assert_eq!(s.tls_crt.as_deref(), Some(&b"cert-bytes-PUBLIC"[..]));
    assert_eq!(s.tls_key.as_deref(), Some(&b"new-key"[..]));
}

#[test]
fn secret_debug_never_shows_key_bytes() {
    let resources = convert_yaml(CLUSTER_OBJECTS).unwrap();
    let secret = &resources[2];
    let Resource::Secret(source) = secret else {
        unreachable!()
    };
    let key = source.tls_key.clone().unwrap();
    let key_as_numbers = format!("{:?}", &key[..6]);
    let key_as_numbers = key_as_numbers.trim_matches(|c| c == '[' || c == ']');
    for debug in [
        format!("{secret:?}"),
        format!("{secret:#?}"),
        format!("{source:?}"),
        format!("{resources:?}"),
    ] {
        assert!(debug.contains("echo-tls"), "{debug}");
        for leak in [
            "KEYMATERIAL",
            "S0VZTUFURVJJQUwtZG8tbm90LWxvZw",
            key_as_numbers,
        ] {
            assert!(
                !debug.contains(leak),
                "Debug output leaks key material: {debug}"
            );
        }
    }
}

#[test]
fn malformed_objects_are_named_in_errors() {
    let cases = [
        (
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                   "metadata": {"name": "broken", "namespace": "team-a"},
                   "spec": {"rules": "not-a-list"}}),
            "Ingress team-a/broken is malformed",
        ),
        (
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "slice"}, "endpoints": [{"addresses": "10.0.0.1"}]}),
            "EndpointSlice slice is malformed: invalid type",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
                   "spec": {"ports": [{"port": "eighty"}]}}),
            "Service svc is malformed",
        ),
        (
            json!({"kind": "Ingress", "metadata": {"name": "typeless"}}),
            "object typeless: missing or empty `apiVersion`",
        ),
        (
            json!({"apiVersion": "v1", "metadata": {"name": "kindless"}}),
            "object kindless: missing or empty `kind`",
        ),
        (
            json!({"apiVersion": "extensions/v1beta1", "kind": "Ingress",
                   "metadata": {"name": "old", "namespace": "legacy"}}),
            "Ingress legacy/old: apiVersion extensions/v1beta1 is not supported",
        ),
        (json!("just a string"), "not a Kubernetes object"),
        (
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "x-"}}),
            "Secret without `metadata.name`",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": ""}}),
            "Service without `metadata.name`",
        ),
        (
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"name": "l"}, "items": 3}),
            "List l: `items` must be a sequence",
        ),
    ];
    for (value, expected) in cases {
        let err = convert::resources_from_value(&value).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{value}: expected {expected:?}, got {err}"
        );
    }
}

#[test]
fn malformed_secret_errors_withhold_details() {
    for secret in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "n"},
               "data": "KEYMATERIAL-in-the-wrong-place"}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "n"},
               "data": {"tls.key": "KEYMATERIAL not base64!"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "n"},
               "stringData": {"tls.key": ["KEYMATERIAL"]}}),
    ] {
        let err = convert::resource_from_value(&secret).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("Secret n/tls is malformed"), "{text}");
        assert!(
            !text.contains("KEYMATERIAL"),
            "error leaks key material: {text}"
        );
    }
}

#[test]
fn typed_objects_convert_with_defaults() {
    // An object built in code, as the controller's watches deliver them.
    let ingress = Ingress {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("typed".into()),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            )),
            ..Default::default()
        },
        spec: None,
        status: None,
    };
    let src = IngressSource::from(&ingress);
    assert_eq!(src.key, ObjectKey::new("default", "typed"));
    assert_eq!(src.creation_timestamp, Some(1_700_000_000));
    assert!(src.rules.is_empty() && src.default_backend.is_none());
    // Without spec the API server would have refused it; validation says why.
    let problems = validate::ingress(&src);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "spec");
}

#[test]
fn missing_path_type_is_left_for_validation() {
    // k8s-openapi accepts the object (reading the required field as ""); the model keeps it
    // missing so that validation reports it as the API server would.
    let value = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
    "metadata": {"name": "no-path-type"},
    "spec": {"rules": [{"http": {"paths": [
        {"path": "/", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}
    ]}}]}});
    let Some(Resource::Ingress(ing)) = convert::resource_from_value(&value).unwrap() else {
        panic!("not an Ingress")
    };
    assert_eq!(ing.rules[0].http.as_ref().unwrap()[0].path_type, None);
    let problems: Vec<String> = validate::ingress(&ing)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        ["spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"]
    );
}

#[test]
fn typed_lists_as_the_api_returns_them() {
    // `GET /apis/networking.k8s.io/v1/ingresses`: the items carry no apiVersion or kind.
    let list = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressList",
        "metadata": {"resourceVersion": "42"},
        "items": [
            {"metadata": {"name": "a", "namespace": "x"},
             "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}}},
            {"metadata": {"name": "b", "namespace": "y"},
             "spec": {"defaultBackend": {"service": {"name": "s", "port": {"name": "http"}}}}}
        ]
    });
    let keys: Vec<String> = convert::resources_from_value(&list)
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.kind(), r.key()))
        .collect();
    assert_eq!(keys, ["Ingress x/a", "Ingress y/b"]);
    let err = convert::resource_from_value(&list).unwrap_err();
    assert!(matches!(err, ConvertError::UnexpectedList { .. }), "{err}");

    let empty = json!({"apiVersion": "v1", "kind": "SecretList", "items": null});
    assert_eq!(convert::resources_from_value(&empty).unwrap(), vec![]);
    let ignored =
        json!({"apiVersion": "v1", "kind": "PodList", "items": [{"metadata": {"name": "p"}}]});
    assert_eq!(convert::resources_from_value(&ignored).unwrap(), vec![]);
}

#[test]
fn yaml_manifests_convert_in_one_call() {
    let text = std::fs::read_to_string(portico_test_support::testdata("manifests/path-rules.yaml"))
        .unwrap();
    let resources = portico_model::convert::resources_from_yaml(&text).unwrap();
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0].kind(), portico_model::ResourceKind::Ingress);
    let err = portico_model::convert::resources_from_yaml("a: [unclosed").unwrap_err();
    assert!(err.to_string().starts_with("YAML document 1"), "{err}");
}
