//! HTTP handlers: URL routing to discovery, OpenAPI, the admin endpoint and the resource verbs,
//! query parameter parsing, and `Status` error answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

use crate::error::{ApiError, success_status};
use crate::faults::{FaultSettings, Faults};
use crate::objects::{FieldValidation, Objects, Part, PatchType, WriteOptions};
use crate::registry::{self, ResourceId, ResourceInfo};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::ObjectKey;
use crate::views::{self, View};
use crate::watch::{self, Start, WatchRequest};
use crate::{discovery, openapi, protobuf, table};

pub type ResponseBody = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// Everything a request handler needs; shared by all connections.
#[derive(Debug)]
pub struct Shared {
    pub objects: Objects,
    pub faults: Faults,
    pub minor: u32,
    pub bookmark_interval: Duration,
    pub server_address: std::sync::OnceLock<String>,
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn json_response(status: u16, value: &Value) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(full(body))
        .expect("valid response")
}

pub fn error_response(err: &ApiError) -> Response<ResponseBody> {
    let mut resp = json_response(err.code, &err.to_status());
    if err.code == 503 || err.code == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

struct Query(HashMap<String, String>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn write_options(&self) -> Result<WriteOptions, ApiError> {
        let field_validation = match self.get("fieldValidation") {
            None | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation parameter unsupported: {other}"
                )));
            }
        };
        let dry_run = match self.get("dryRun") {
            None => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported dry run value {other:?}"
                )));
            }
        };
        Ok(WriteOptions {
            dry_run,
            field_manager: self.get("fieldManager").map(str::to_string),
            field_validation,
            force: self.flag("force"),
            user_agent: None,
        })
    }

    fn labels(&self) -> Result<LabelSelector, ApiError> {
        LabelSelector::parse(self.get("labelSelector").unwrap_or_default())
    }

    fn fields(&self) -> Result<FieldSelector, ApiError> {
        FieldSelector::parse(self.get("fieldSelector").unwrap_or_default())
    }
}

/// A resource URL, parsed.
struct Target {
    /// Where the objects are stored (differs from `api_resource` for views).
    resource: ResourceId,
    /// The resource the URL names.
    api_resource: ResourceId,
    view: Option<View>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_path: bool,
}

fn parse_target(segments: &[&str]) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (group, version, mut rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let watch_path = rest.first() == Some(&"watch");
    if watch_path {
        rest = &rest[1..];
    }
    let namespaced_lookup = |plural: &str| {
        registry::lookup(group, version, plural).filter(|id| registry::get(*id).namespaced)
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_lookup(plural).is_some() => {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let resource = registry::lookup(group, version, plural).ok_or_else(not_found)?;
    let info = registry::get(resource);
    if !info.namespaced && namespace.is_some() {
        return Err(not_found());
    }
    if info.namespaced && name.is_some() && namespace.is_none() {
        return Err(not_found());
    }
    if let Some(sub) = &subresource {
        let ok =
            (sub == "status" && info.has_status) || (sub == "finalize" && info.kind == "Namespace");
        if !ok {
            return Err(not_found());
        }
    }
    let view = views::of(resource);
    Ok(Target {
        resource: view.as_ref().map_or(resource, |v| v.storage),
        api_resource: resource,
        view,
        namespace,
        name,
        subresource,
        watch_path,
    })
}

/// Answers one request whose body has been read.
pub async fn handle(shared: Arc<Shared>, req: Request<Bytes>) -> Response<ResponseBody> {
    match route(&shared, req).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    }
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Bytes>,
) -> Result<Response<ResponseBody>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = Query(parse_query(req.uri().query()));
    let get = req.method() == Method::GET;
    match segments.as_slice() {
        ["version"] if get => Ok(json_response(200, &discovery::version(shared.minor))),
        ["healthz" | "livez" | "readyz"] if get => Ok(Response::new(full("ok"))),
        ["api"] if get => {
            let addr = shared
                .server_address
                .get()
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:0".into());
            Ok(json_response(200, &discovery::core_versions(&addr)))
        }
        ["apis"] if get => Ok(json_response(200, &discovery::group_list())),
        ["api", v] if get => discovery::resource_list("", v)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found),
        ["apis", g] if get => discovery::api_group(g)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found),
        ["apis", g, v] if get => discovery::resource_list(g, v)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found),
        ["openapi", "v2"] if get => Ok(openapi::v2_response(&req)),
        ["openapi", "v3"] if get => Ok(json_response(200, &openapi::v3_index())),
        ["openapi", "v3", rest @ ..] if get => openapi::v3_document(&rest.join("/"))
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found),
        ["admin", "faults", rest @ ..] => admin(&shared.faults, req.method(), rest, req.body()),
        _ => resource(shared, &segments, &query, req).await,
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn admin(
    faults: &Faults,
    method: &Method,
    rest: &[&str],
    body: &Bytes,
) -> Result<Response<ResponseBody>, ApiError> {
    match (method, rest) {
        (&Method::GET, []) => {}
        (&Method::PUT | &Method::POST, []) => {
            let settings: FaultSettings = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("bad fault settings: {e}")))?;
            faults.set(settings);
        }
        (&Method::POST, ["drop-watches"]) => faults.drop_watches(),
        (&Method::POST, ["reset"]) => faults.reset(),
        _ => return Err(not_found()),
    }
    let current = serde_json::to_value(faults.current()).unwrap_or_default();
    Ok(json_response(200, &current))
}

/// `unknown field "x"` warnings for `fieldValidation=Warn` (the default), as kube-apiserver
/// sends them in `Warning` headers; the fields themselves are dropped.
fn warnings_for(info: &registry::ResourceInfo, opts: &WriteOptions, body: &Value) -> Vec<String> {
    if opts.field_validation != FieldValidation::Warn {
        return Vec::new();
    }
    crate::objects::unknown_fields_of(info, body)
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect()
}

fn with_warnings(mut resp: Response<ResponseBody>, warnings: &[String]) -> Response<ResponseBody> {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, value);
        }
    }
    resp
}

/// The body of a create or replace: protobuf when the Content-Type says so (kubectl's typed
/// clients), else JSON or YAML. A protobuf body must hold the kind the URL names.
fn parse_object_body(req: &Request<Bytes>, info: &ResourceInfo) -> Result<Value, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !protobuf::is_protobuf(content_type) {
        return parse_body(req.body());
    }
    protobuf::decode(req.body(), &info.api_version(), info.kind).map_err(|e| {
        if e.is_unsupported() {
            ApiError::unsupported_media_type(content_type)
        } else {
            ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
        }
    })
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    serde_yaml::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

async fn resource(
    shared: &Arc<Shared>,
    segments: &[&str],
    query: &Query,
    req: Request<Bytes>,
) -> Result<Response<ResponseBody>, ApiError> {
    let target = parse_target(segments)?;
    let info = registry::get(target.api_resource);
    let out = |object: &Value| match &target.view {
        Some(view) => (view.to_view)(object),
        None => object.clone(),
    };
    let into_storage = |object: Value| match &target.view {
        Some(view) => (view.to_storage)(&object),
        None => object,
    };
    let objects = &shared.objects;
    let method = req.method().clone();
    let is_write = !matches!(method, Method::GET | Method::HEAD);
    if let Some(err) = is_write.then(|| shared.faults.count_write()).flatten() {
        return Err(err);
    }
    let wants_table = table::wanted(req.headers());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let write_options = || {
        query.write_options().map(|mut o| {
            o.user_agent = user_agent.clone();
            o
        })
    };
    let part = match target.subresource.as_deref() {
        Some("status") => Part::Status,
        _ => Part::Main,
    };
    let Some(name) = target.name.clone() else {
        // Collection URLs.
        return match method {
            Method::GET if target.watch_path || query.flag("watch") => {
                watch(shared, &target, query, wants_table)
            }
            Method::GET => list(shared, &target, query, wants_table),
            Method::POST => {
                let Some(ns) = target
                    .namespace
                    .as_deref()
                    .or((!info.namespaced).then_some(""))
                else {
                    return Err(ApiError::method_not_allowed(
                        "POST requires a namespace for a namespaced resource",
                    ));
                };
                let opts = write_options()?;
                let body = into_storage(parse_object_body(&req, info)?);
                let warnings = warnings_for(registry::get(target.resource), &opts, &body);
                let created = objects.create(target.resource, ns, body, &opts)?;
                Ok(with_warnings(json_response(201, &out(&created)), &warnings))
            }
            Method::DELETE => delete_collection(shared, &target, query),
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on a collection"
            ))),
        };
    };
    let key = ObjectKey::new(target.namespace.clone().unwrap_or_default(), name.clone());
    match method {
        Method::GET if target.watch_path => {
            let mut q = query.0.clone();
            q.insert("fieldSelector".into(), format!("metadata.name={name}"));
            let t = Target {
                name: None,
                ..target
            };
            watch(shared, &t, &Query(q), wants_table)
        }
        Method::GET => {
            let object = objects
                .store()
                .get(target.resource, &key)
                .ok_or_else(|| ApiError::not_found(info, &name))?;
            let object = Arc::new(out(&object));
            if wants_table {
                return Ok(json_response(
                    200,
                    &table::table(info, std::slice::from_ref(&object), None, &json!({})),
                ));
            }
            Ok(json_response(200, &object))
        }
        Method::PUT => {
            let opts = write_options()?;
            let body = into_storage(parse_object_body(&req, info)?);
            let warnings = warnings_for(registry::get(target.resource), &opts, &body);
            let committed = objects.replace(target.resource, &key, body, part, &opts)?;
            Ok(with_warnings(
                json_response(200, &out(&committed.object)),
                &warnings,
            ))
        }
        Method::PATCH => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let patch_type = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            let opts = write_options()?;
            let committed = match &target.view {
                Some(view) if patch_type != PatchType::Apply => {
                    objects.patch_view(view, &key, patch_type, req.body(), &opts)?
                }
                _ => objects.patch(target.resource, &key, patch_type, req.body(), part, &opts)?,
            };
            let code = if committed.kind == Some(crate::store::EventType::Added) {
                201
            } else {
                200
            };
            Ok(json_response(code, &out(&committed.object)))
        }
        Method::DELETE => {
            let opts = write_options()?;
            let options = if req.body().is_empty() {
                json!({})
            } else {
                parse_body(req.body())?
            };
            let preconditions = options.get("preconditions").cloned().unwrap_or(json!({}));
            let committed = objects.delete(target.resource, &key, &preconditions, &opts)?;
            if committed.kind == Some(crate::store::EventType::Deleted)
                || opts.dry_run && committed.object.pointer("/metadata/finalizers").is_none()
            {
                let uid = committed
                    .object
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Ok(json_response(200, &success_status(info, &name, uid)))
            } else {
                Ok(json_response(200, &out(&committed.object)))
            }
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported"
        ))),
    }
}

fn parse_rv(value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {value:?}")))
}

/// The continue token: the list snapshot's rv and the last key returned.
fn encode_continue(rv: u64, key: &ObjectKey) -> String {
    use base64::Engine;
    let raw = json!({"rv": rv, "ns": key.namespace, "name": key.name}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(u64, ObjectKey), ApiError> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let key = ObjectKey::new(
        v["ns"].as_str().unwrap_or_default(),
        v["name"].as_str().ok_or_else(bad)?,
    );
    Ok((rv, key))
}

fn list(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
    wants_table: bool,
) -> Result<Response<ResponseBody>, ApiError> {
    let info = registry::get(target.api_resource);
    let store = shared.objects.store();
    let labels = query.labels()?;
    let fields = query.fields()?;
    let limit = query
        .get("limit")
        .map(|l| l.parse::<usize>())
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid limit"))?
        .filter(|l| *l > 0);
    let (rv, table, after) = match query.get("continue") {
        Some(token) => {
            let (rv, key) = decode_continue(token)?;
            let table = store.kept_snapshot(rv, target.resource).ok_or_else(|| {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            })?;
            (rv, table, Some(key))
        }
        None => {
            let (rv, table) = store.snapshot(target.resource);
            (rv, table, None)
        }
    };
    let in_scope = |k: &ObjectKey| {
        target
            .namespace
            .as_ref()
            .is_none_or(|ns| &k.namespace == ns)
    };
    let mut items = Vec::new();
    let mut next = None;
    let mut remaining = 0usize;
    let range: Box<dyn Iterator<Item = (&ObjectKey, &Arc<Value>)>> =
        match (&after, &target.namespace) {
            (Some(a), _) => Box::new(table.range((
                std::ops::Bound::Excluded(a.clone()),
                std::ops::Bound::Unbounded,
            ))),
            (None, Some(ns)) => Box::new(table.range(ObjectKey::new(ns.clone(), "")..)),
            (None, None) => Box::new(table.iter()),
        };
    let mut last_key = None;
    for (key, object) in range {
        if !in_scope(key) {
            if target.namespace.is_some()
                && key.namespace.as_str() > target.namespace.as_deref().unwrap_or_default()
            {
                break;
            }
            continue;
        }
        if !labels.matches(object) || !fields.matches(object) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            next = last_key.clone();
            remaining += 1;
            continue;
        }
        items.push(match &target.view {
            Some(view) => Arc::new((view.to_view)(object)),
            None => object.clone(),
        });
        last_key = Some(key.clone());
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(key) = next {
        store.keep_snapshot(rv, target.resource, table.clone());
        metadata["continue"] = encode_continue(rv, &key).into();
        metadata["remainingItemCount"] = remaining.into();
    }
    if wants_table {
        return Ok(json_response(
            200,
            &table::table(info, &items, None, &metadata),
        ));
    }
    let body = json!({
        "kind": info.list_kind,
        "apiVersion": info.api_version(),
        "metadata": metadata,
        "items": items.iter().map(|o| list_item(o)).collect::<Vec<_>>(),
    });
    Ok(json_response(200, &body))
}

/// An object as a JSON list carries it: without `apiVersion` and `kind`, which the list's own
/// say for every item (kube-apiserver's encoding; clients fill them in from the list).
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    item
}

fn delete_collection(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
) -> Result<Response<ResponseBody>, ApiError> {
    let info = registry::get(target.api_resource);
    let labels = query.labels()?;
    let fields = query.fields()?;
    let opts = query.write_options()?;
    let (_, table) = shared.objects.store().snapshot(target.resource);
    let mut deleted = Vec::new();
    for (key, object) in table.iter() {
        if target
            .namespace
            .as_ref()
            .is_some_and(|ns| &key.namespace != ns)
            || !labels.matches(object)
            || !fields.matches(object)
        {
            continue;
        }
        match shared
            .objects
            .delete(target.resource, key, &json!({}), &opts)
        {
            Ok(c) => deleted.push(match &target.view {
                Some(view) => Arc::new((view.to_view)(&c.object)),
                None => c.object,
            }),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": info.list_kind,
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": shared.objects.store().current_rv().to_string()},
            "items": deleted.iter().map(|o| list_item(o)).collect::<Vec<_>>(),
        }),
    ))
}

fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
    wants_table: bool,
) -> Result<Response<ResponseBody>, ApiError> {
    let initial_events = query.flag("sendInitialEvents");
    let start = match query.get("resourceVersion") {
        _ if initial_events => Start::InitialEvents,
        None | Some("0") => Start::CurrentState,
        Some(rv) => Start::After(parse_rv(rv)?),
    };
    let timeout = query
        .get("timeoutSeconds")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))
        })
        .transpose()?
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let req = WatchRequest {
        resource: target.resource,
        namespace: target.namespace.clone(),
        labels: query.labels()?,
        fields: query.fields()?,
        start,
        bookmarks: query.flag("allowWatchBookmarks") || initial_events,
        timeout,
        bookmark_interval: shared.bookmark_interval,
    };
    let rx = watch::spawn(shared.objects.store().clone(), &shared.faults, req);
    let info = registry::get(target.api_resource);
    let view = target.view.as_ref().map(|v| (v.to_view, info));
    let frames = tokio_stream(rx, wants_table.then_some(info), view);
    let body = StreamBody::new(frames).boxed_unsync();
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("valid response"))
}

/// How watch frames of a view are converted: the conversion and the view's resource.
type ViewFrames = (fn(&Value) -> Value, &'static registry::ResourceInfo);

/// Turns the watch channel into body frames; for `kubectl get -w` each object becomes a Table.
fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    table_of: Option<&'static registry::ResourceInfo>,
    view: Option<ViewFrames>,
) -> impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>>
+ Send
+ 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |bytes| {
        let bytes = match view {
            Some((convert, info)) => view_frame(convert, info, &bytes).unwrap_or(bytes),
            None => bytes,
        };
        let bytes = match table_of {
            Some(info) => table::watch_frame_as_table(info, &bytes).unwrap_or(bytes),
            None => bytes,
        };
        Ok(http_body::Frame::data(bytes))
    })
}

use futures_util::StreamExt;

/// Converts the object of a watch frame of a view (bookmarks get the view's kind).
fn view_frame(
    convert: fn(&Value) -> Value,
    info: &registry::ResourceInfo,
    frame: &Bytes,
) -> Option<Bytes> {
    let mut event: Value = serde_json::from_slice(frame).ok()?;
    match event["type"].as_str() {
        Some("ADDED" | "MODIFIED" | "DELETED") => event["object"] = convert(&event["object"]),
        Some("BOOKMARK") => {
            event["object"]["apiVersion"] = info.api_version().into();
            event["object"]["kind"] = info.kind.into();
        }
        _ => return None,
    }
    let mut bytes = serde_json::to_vec(&event).ok()?;
    bytes.push(b'\n');
    Some(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::parse_query;

    #[test]
    fn query_strings_decode_as_kubectl_and_client_go_encode_them() {
        let query = parse_query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&fieldSelector=metadata.name%3Dx&watch&limit=500&bad=%zz",
        ));
        assert_eq!(query["labelSelector"], "app=web,tier in (a,b)");
        assert_eq!(query["fieldSelector"], "metadata.name=x");
        assert_eq!(query["watch"], "");
        assert_eq!(query["limit"], "500");
        // A malformed escape stays as it was written.
        assert_eq!(query["bad"], "%zz");
        assert!(parse_query(None).is_empty());
    }
}
