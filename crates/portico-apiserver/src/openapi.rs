//! OpenAPI v3 documents, generated from the registry, with what kubectl reads from them:
//!
//! - kubectl's validation (`--validate=strict`, the default) asks `/openapi/v3` whether the PATCH
//!   operation of a kind takes the `fieldValidation` parameter; since ours does, kubectl leaves
//!   validation to the server (strict decoding in [`crate::objects`]) instead of validating
//!   client-side against an OpenAPI v2 schema;
//! - client-side `kubectl apply` looks up the kind's schema for strategic-merge metadata; we
//!   publish no component schemas, so it uses its compiled-in Go types for these built-in
//!   kinds, which carry the same merge keys as the real schemas.
//!
//! kubectl 1.27 and 1.28 still ask `/openapi/v2` (as protobuf, gnostic's `openapi_v2.Document`)
//! for the same `fieldValidation` question; [`v2_response`] answers it with the paths and
//! operations only (no definitions), encoded by the small protobuf writer below, or as JSON.

use bytes::Bytes;
use http::{Request, Response};
use serde_json::{Map, Value, json};

use crate::http::ResponseBody;
use crate::registry::{self, RESOURCES, ResourceInfo};

const HASH: &str = "7f3c1a0e9b2d4c6a8e0f1b3d5c7e9a1b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f";

const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2`: protobuf when asked for (kubectl), JSON otherwise.
pub fn v2_response(req: &Request<Bytes>) -> Response<ResponseBody> {
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("protobuf") {
        let body = http_body_util::BodyExt::map_err(
            http_body_util::Full::new(Bytes::from(v2_protobuf())),
            |never| match never {},
        );
        return Response::builder()
            .header(http::header::CONTENT_TYPE, V2_PROTOBUF)
            .body(http_body_util::BodyExt::boxed_unsync(body))
            .expect("valid response");
    }
    crate::http::json_response(200, &v2_json())
}

/// The resource operations of every served kind: (path, method, info, action).
fn operations() -> Vec<(String, &'static str, &'static ResourceInfo, &'static str)> {
    let mut ops = Vec::new();
    for info in RESOURCES {
        let base = format!("/{}", gv_path(info.group, info.version));
        let (collection, item) = if info.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", info.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
            )
        } else {
            (
                format!("{base}/{}", info.plural),
                format!("{base}/{}/{{name}}", info.plural),
            )
        };
        ops.push((collection.clone(), "get", info, "list"));
        ops.push((collection, "post", info, "post"));
        for (method, action) in [
            ("get", "get"),
            ("put", "put"),
            ("patch", "patch"),
            ("delete", "delete"),
        ] {
            ops.push((item.clone(), method, info, action));
        }
        if info.has_status {
            for (method, action) in [("get", "get"), ("put", "put"), ("patch", "patch")] {
                ops.push((format!("{item}/status"), method, info, action));
            }
        }
    }
    ops
}

fn v2_json() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (path, method, info, action) in operations() {
        let params: Vec<Value> = write_params(method != "get", action)
            .into_iter()
            .map(|p| json!({"name": p, "in": "query", "type": "string", "uniqueItems": true}))
            .collect();
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[method] = json!({
            "operationId": format!("{action}{}", info.kind),
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version, "kind": info.kind},
        });
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "unversioned"}, "paths": paths, "definitions": {}})
}

fn write_params(write: bool, action: &str) -> Vec<&'static str> {
    let mut params = vec!["pretty"];
    if write {
        params.extend(["dryRun", "fieldManager", "fieldValidation"]);
    }
    if action == "patch" {
        params.push("force");
    }
    params
}

/// A minimal protobuf writer: length-delimited fields and varints are all gnostic needs here.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, data: &[u8]) -> &mut Self {
        self.varint(u64::from((field << 3) | 2));
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }

    fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    fn message(&mut self, field: u32, build: impl FnOnce(&mut Proto)) -> &mut Self {
        let mut inner = Proto::default();
        build(&mut inner);
        self.bytes(field, &inner.0)
    }

    fn boolean(&mut self, field: u32, v: bool) -> &mut Self {
        self.varint(u64::from(field << 3));
        self.varint(u64::from(v));
        self
    }
}

type PathOps = Vec<(&'static str, &'static ResourceInfo, &'static str)>;

/// gnostic `openapi_v2.Document` with the paths of [`operations`].
fn v2_protobuf() -> Vec<u8> {
    let mut by_path: Vec<(String, PathOps)> = Vec::new();
    for (path, method, info, action) in operations() {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, ops)) => ops.push((method, info, action)),
            None => by_path.push((path, vec![(method, info, action)])),
        }
    }
    let mut doc = Proto::default();
    doc.string(1, "2.0"); // swagger
    doc.message(2, |info| {
        info.string(1, "Kubernetes").string(2, "unversioned");
    });
    doc.message(8, |paths| {
        for (path, ops) in &by_path {
            paths.message(2, |named| {
                named.string(1, path);
                named.message(2, |item| {
                    for (method, info, action) in ops {
                        // PathItem: get = 2, put = 3, post = 4, delete = 5, patch = 8.
                        let field = match *method {
                            "get" => 2,
                            "put" => 3,
                            "post" => 4,
                            "delete" => 5,
                            _ => 8,
                        };
                        item.message(field, |op| {
                            encode_operation(op, info, action, *method != "get")
                        });
                    }
                });
            });
        }
    });
    doc.0
}

fn encode_operation(op: &mut Proto, info: &ResourceInfo, action: &str, write: bool) {
    op.string(5, &format!("{action}{}", info.kind)); // operation_id
    for name in write_params(write, action) {
        // ParametersItem.parameter(1) -> Parameter.non_body_parameter(2)
        //   -> NonBodyParameter.query_parameter_sub_schema(3): in(2), name(4), type(6), unique_items(20)
        op.message(8, |item| {
            item.message(1, |param| {
                param.message(2, |non_body| {
                    non_body.message(3, |q| {
                        q.string(2, "query")
                            .string(4, name)
                            .string(6, "string")
                            .boolean(20, true);
                    });
                });
            });
        });
    }
    op.message(9, |responses| {
        responses.message(1, |named| {
            named.string(1, "200").message(2, |value| {
                value.message(1, |resp| {
                    resp.string(1, "OK");
                });
            });
        });
    });
    let gvk = format!(
        "group: \"{}\"\nkind: {}\nversion: {}\n",
        info.group, info.kind, info.version
    );
    for (name, yaml) in [
        ("x-kubernetes-action", format!("{action}\n")),
        ("x-kubernetes-group-version-kind", gvk),
    ] {
        // vendor_extension(13): NamedAny { name(1), value(2): Any { yaml(2) } }
        op.message(13, |ext| {
            ext.string(1, name).message(2, |any| {
                any.string(2, &yaml);
            });
        });
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the per-group-version document index.
pub fn v3_index() -> Value {
    let mut paths = Map::new();
    for (g, v) in registry::group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}")}),
        );
    }
    json!({"paths": paths})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(info: &ResourceInfo, action: &str, op_id: String, write: bool) -> Value {
    let mut params = vec![query_param(
        "pretty",
        "If 'true', then the output is pretty printed.",
    )];
    if write {
        params.push(query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ));
        params.push(query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."));
        params.push(query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."));
    }
    if action == "patch" {
        params.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    if matches!(action, "list" | "deletecollection") {
        for p in [
            "continue",
            "fieldSelector",
            "labelSelector",
            "limit",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
        ] {
            params.push(query_param(p, p));
        }
    }
    json!({
        "operationId": op_id,
        "parameters": params,
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version, "kind": info.kind},
    })
}

fn op_name(info: &ResourceInfo) -> String {
    let group: String = info
        .group
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let version = format!(
        "{}{}",
        info.version[..1].to_ascii_uppercase(),
        &info.version[1..]
    );
    if group.is_empty() {
        format!("Core{version}")
    } else {
        format!("{group}{version}")
    }
}

/// `/openapi/v3/{api/v1 | apis/group/version}`.
pub fn v3_document(path: &str) -> Option<Value> {
    let (group, version) = registry::group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path)?;
    let mut paths = Map::new();
    for info in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = format!("/{}", gv_path(group, version));
        let scope = if info.namespaced { "Namespaced" } else { "" };
        let gv = op_name(info);
        let (collection, item) = if info.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", info.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
            )
        } else {
            (
                format!("{base}/{}", info.plural),
                format!("{base}/{}/{{name}}", info.plural),
            )
        };
        let k = info.kind;
        paths.insert(collection, json!({
            "get": operation(info, "list", format!("list{gv}{scope}{k}"), false),
            "post": operation(info, "post", format!("create{gv}{scope}{k}"), true),
            "delete": operation(info, "deletecollection", format!("deletecollection{gv}{scope}{k}"), true),
        }));
        paths.insert(
            item.clone(),
            json!({
                "get": operation(info, "get", format!("read{gv}{scope}{k}"), false),
                "put": operation(info, "put", format!("replace{gv}{scope}{k}"), true),
                "patch": operation(info, "patch", format!("patch{gv}{scope}{k}"), true),
                "delete": operation(info, "delete", format!("delete{gv}{scope}{k}"), true),
            }),
        );
        if info.has_status {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": operation(info, "get", format!("read{gv}{scope}{k}Status"), false),
                    "put": operation(info, "put", format!("replace{gv}{scope}{k}Status"), true),
                    "patch": operation(info, "patch", format!("patch{gv}{scope}{k}Status"), true),
                }),
            );
        }
        if info.namespaced {
            paths.insert(
                format!("{base}/{}", info.plural),
                json!({
                    "get": operation(info, "list", format!("list{gv}{k}ForAllNamespaces"), false),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
