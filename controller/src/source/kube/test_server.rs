//! A test API server that speaks the Kubernetes list/watch protocol over HTTP/1.1.
//!
//! It serves `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices` and
//! `/api/v1/nodes` for all namespaces, as the real API server does with JSON:
//!
//! - a list answers `{"kind": "ServiceList", "metadata": {"resourceVersion": "N"},
//!   "items": [...]}`, each item with its own `metadata.resourceVersion`;
//! - `?watch=1&resourceVersion=N` answers a chunked stream of one JSON event per line
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when `allowWatchBookmarks=true`), first
//!   replaying every event after N, then live ones;
//! - a watch from a version older than the last compaction is answered `410 Gone`, either
//!   as the HTTP status with a `Status` body or as a `200` carrying one `ERROR` event with
//!   code 410 ([`GoneMode`]), which is what the real server does;
//! - `labelSelector` (`key`, `!key`, `key=value`, `key!=value`) and `fieldSelector`
//!   (`metadata.name=`, `metadata.namespace=`) filter lists and watch events.
//!
//! Resource versions are one counter over all kinds, as etcd's revision. The test drives
//! it: [`TestApiServer::apply`], [`TestApiServer::delete`],
//! [`TestApiServer::disconnect_watches`] (drops every open watch connection mid-stream),
//! [`TestApiServer::compact`] (changes objects without recording events, forgets history
//! and closes the watches, so only a relist can see the changes) and
//! [`TestApiServer::bookmark`]. Every request is logged for assertions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// A collection the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Services,
    EndpointSlices,
    Nodes,
    ServiceCidrs,
}

impl Collection {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Collection::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Collection::EndpointSlices),
            "/api/v1/nodes" => Some(Collection::Nodes),
            "/apis/networking.k8s.io/v1/servicecidrs" => Some(Collection::ServiceCidrs),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Collection::EndpointSlices => "discovery.k8s.io/v1",
            Collection::ServiceCidrs => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Collection::Services => "Service",
            Collection::EndpointSlices => "EndpointSlice",
            Collection::Nodes => "Node",
            Collection::ServiceCidrs => "ServiceCIDR",
        }
    }
}

/// How a watch from a compacted resource version is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneMode {
    /// HTTP `410 Gone` with a `Status` body.
    HttpStatus,
    /// HTTP `200` with one `ERROR` event whose Status has code 410.
    ErrorEvent,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub collection: Collection,
    pub watch: bool,
    pub query: HashMap<String, String>,
}

type Key = (String, String);

#[derive(Debug)]
struct Recorded {
    collection: Collection,
    rv: u64,
    event_type: &'static str,
    object: Value,
}

#[derive(Debug)]
struct ServerState {
    rv: u64,
    /// Watches from a version older than this are gone.
    oldest: u64,
    objects: BTreeMap<Collection, BTreeMap<Key, Value>>,
    history: Vec<Recorded>,
    gone_mode: GoneMode,
    /// Bumped to close every open watch.
    disconnects: u64,
    /// Bumped to send a bookmark on every open watch.
    bookmarks: u64,
    /// How many `BOOKMARK` events the watches have queued.
    bookmarks_sent: usize,
    requests: Vec<LoggedRequest>,
    /// Events created (`POST .../events.k8s.io/v1/.../events`), as sent.
    events: Vec<Value>,
}

impl ServerState {
    fn key_of(object: &Value) -> Key {
        let meta = |f: &str| {
            object["metadata"][f]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        (meta("namespace"), meta("name"))
    }

    /// Stores `object` with a new resource version; returns the event type and stamped object.
    fn store(&mut self, collection: Collection, mut object: Value) -> (&'static str, Value) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        object["apiVersion"] = json!(collection.api_version());
        object["kind"] = json!(collection.kind());
        let objects = self.objects.entry(collection).or_default();
        let old = objects.insert(Self::key_of(&object), object.clone());
        let event_type = if old.is_some() { "MODIFIED" } else { "ADDED" };
        (event_type, object)
    }

    fn remove(&mut self, collection: Collection, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_string(), name.to_string());
        let mut object = self.objects.entry(collection).or_default().remove(&key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        Some(object)
    }
}

/// Handle of a running test API server; dropping it stops serving.
pub struct TestApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<ServerState>>,
    signal: Arc<watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<ServerState>>,
    signal: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApiServer {
    /// Starts serving on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test API server");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(ServerState {
            rv: 100,
            oldest: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            gone_mode: GoneMode::HttpStatus,
            disconnects: 0,
            bookmarks: 0,
            bookmarks_sent: 0,
            requests: Vec::new(),
            events: Vec::new(),
        }));
        let signal = Arc::new(watch::channel(0).0);
        let shared = Shared {
            state: state.clone(),
            signal: signal.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        TestApiServer {
            addr,
            state,
            signal,
            task,
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.signal.send_modify(|n| *n += 1);
    }

    /// Creates or replaces an object (an `ADDED` or `MODIFIED` event).
    pub fn apply(&self, collection: Collection, object: Value) {
        {
            let mut state = self.lock();
            let (event_type, object) = state.store(collection, object);
            let rv = state.rv;
            state.history.push(Recorded {
                collection,
                rv,
                event_type,
                object,
            });
        }
        self.notify();
    }

    /// Deletes an object (a `DELETED` event).
    pub fn delete(&self, collection: Collection, namespace: &str, name: &str) {
        {
            let mut state = self.lock();
            let object = state
                .remove(collection, namespace, name)
                .expect("deleting an object that exists");
            let rv = state.rv;
            state.history.push(Recorded {
                collection,
                rv,
                event_type: "DELETED",
                object,
            });
        }
        self.notify();
    }

    /// Closes every open watch connection abruptly (no terminating chunk).
    pub fn disconnect_watches(&self) {
        self.lock().disconnects += 1;
        self.notify();
    }

    /// Applies `changes` (objects to store, then `(collection, namespace, name)` to delete)
    /// without recording their events, compacts the history so that every version handed
    /// out so far is gone, and closes the open watches (in [`GoneMode::ErrorEvent`] after an
    /// `ERROR` event with code 410). Only a relist can see the changes.
    pub fn compact(
        &self,
        mode: GoneMode,
        stores: Vec<(Collection, Value)>,
        deletes: Vec<(Collection, &str, &str)>,
    ) {
        {
            let mut state = self.lock();
            for (collection, object) in stores {
                state.store(collection, object);
            }
            for (collection, namespace, name) in deletes {
                state.remove(collection, namespace, name).expect("exists");
            }
            state.rv += 1;
            state.oldest = state.rv;
            state.history.clear();
            state.gone_mode = mode;
            state.disconnects += 1;
        }
        self.notify();
    }

    /// Sends a `BOOKMARK` at the current version on every watch that allows them; returns
    /// that version.
    pub fn bookmark(&self) -> u64 {
        let rv = {
            let mut state = self.lock();
            state.rv += 1;
            state.bookmarks += 1;
            state.rv
        };
        self.notify();
        rv
    }

    /// How many `BOOKMARK` events the watches have queued (they reach the client before
    /// anything the same watch sends later, such as a disconnect).
    pub fn bookmarks_sent(&self) -> usize {
        self.lock().bookmarks_sent
    }

    /// The Events created so far, as sent.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().requests.clone()
    }

    /// How many list (`watch == false`) or watch requests of `collection` were served.
    pub fn count(&self, collection: Collection, watch: bool) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.collection == collection && r.watch == watch)
            .count()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether `object` matches the request's label and field selectors.
fn selected(object: &Value, query: &HashMap<String, String>) -> bool {
    let labels = &object["metadata"]["labels"];
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let labels_ok = query.get("labelSelector").is_none_or(|selector| {
        selector.split(',').filter(|t| !t.is_empty()).all(|term| {
            if let Some(key) = term.strip_prefix('!') {
                label(key).is_none()
            } else if let Some((k, v)) = term.split_once("!=") {
                label(k) != Some(v)
            } else if let Some((k, v)) = term.split_once('=') {
                label(k) == Some(v.trim_start_matches('='))
            } else {
                label(term).is_some()
            }
        })
    });
    let fields_ok = query.get("fieldSelector").is_none_or(|selector| {
        selector.split(',').filter(|t| !t.is_empty()).all(|term| {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            let field = k.strip_prefix("metadata.").unwrap_or(k);
            object["metadata"][field].as_str().unwrap_or_default() == v
        })
    });
    labels_ok && fields_ok
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let path = request.uri().path();
    if path.starts_with("/apis/events.k8s.io/v1/namespaces/") && path.ends_with("/events") {
        return record_event(&shared, request).await;
    }
    let Some(collection) = Collection::from_path(request.uri().path()) else {
        let message = format!("the server could not find {}", request.uri().path());
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &message));
    };
    let query = parse_query(request.uri().query());
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    shared.lock().requests.push(LoggedRequest {
        collection,
        watch,
        query: query.clone(),
    });
    if watch {
        start_watch(shared, collection, query)
    } else {
        list(&shared, collection, &query)
    }
}

/// Stores a created Event and answers with it (201), as the API server does.
async fn record_event(shared: &Shared, request: Request) -> Response {
    if request.method() != axum::http::Method::POST {
        let message = "the test server only creates events";
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", message),
        );
    }
    let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
        Ok(body) => body,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &status(400, "BadRequest", &e.to_string()),
            );
        }
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(event) => {
            shared.lock().events.push(event.clone());
            json_response(StatusCode::CREATED, &event)
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", &e.to_string()),
        ),
    }
}

fn list(shared: &Shared, collection: Collection, query: &HashMap<String, String>) -> Response {
    let state = shared.lock();
    let items: Vec<&Value> = state
        .objects
        .get(&collection)
        .into_iter()
        .flat_map(BTreeMap::values)
        .filter(|o| selected(o, query))
        .collect();
    let body = json!({
        "apiVersion": collection.api_version(),
        "kind": format!("{}List", collection.kind()),
        "metadata": {"resourceVersion": state.rv.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn event_line(event_type: &str, object: &Value) -> String {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    line
}

fn start_watch(shared: Shared, collection: Collection, query: HashMap<String, String>) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (gone, mode, disconnects, bookmarks) = {
        let state = shared.lock();
        (
            from < state.oldest,
            state.gone_mode,
            state.disconnects,
            state.bookmarks,
        )
    };
    let message = format!("too old resource version: {from}");
    let expired = status(410, "Expired", &message);
    if gone && mode == GoneMode::HttpStatus {
        return json_response(StatusCode::GONE, &expired);
    }
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(64);
    if gone {
        let _ = tx.try_send(Ok(event_line("ERROR", &expired)));
    } else {
        let allow_bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let stream = WatchStream {
            shared,
            collection,
            query,
            sent: from,
            disconnects,
            bookmarks,
            allow_bookmarks,
        };
        tokio::spawn(stream.run(tx));
    }
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("response")
}

/// One open watch.
struct WatchStream {
    shared: Shared,
    collection: Collection,
    query: HashMap<String, String>,
    /// The version of the last event sent.
    sent: u64,
    disconnects: u64,
    bookmarks: u64,
    allow_bookmarks: bool,
}

/// What one wake-up of a watch does.
enum Step {
    Send(Vec<String>),
    Close(Option<String>),
}

impl WatchStream {
    async fn run(mut self, tx: mpsc::Sender<Result<String, std::io::Error>>) {
        let mut signal = self.shared.signal.subscribe();
        loop {
            match self.step() {
                Step::Send(lines) => {
                    for line in lines {
                        if tx.send(Ok(line)).await.is_err() {
                            return;
                        }
                    }
                }
                Step::Close(last) => {
                    if let Some(line) = last {
                        let _ = tx.send(Ok(line)).await;
                    } else {
                        let abort = std::io::Error::other("test server drops the connection");
                        let _ = tx.send(Err(abort)).await;
                    }
                    return;
                }
            }
            tokio::select! {
                changed = signal.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    }

    fn step(&mut self) -> Step {
        let mut state = self.shared.lock();
        if state.disconnects != self.disconnects {
            if state.gone_mode == GoneMode::ErrorEvent && self.sent < state.oldest {
                let message = format!("too old resource version: {}", self.sent);
                let line = event_line("ERROR", &status(410, "Expired", &message));
                return Step::Close(Some(line));
            }
            return Step::Close(None);
        }
        let mut lines = Vec::new();
        for event in &state.history {
            if event.collection == self.collection
                && event.rv > self.sent
                && selected(&event.object, &self.query)
            {
                lines.push(event_line(event.event_type, &event.object));
                self.sent = event.rv;
            }
        }
        if state.bookmarks != self.bookmarks {
            self.bookmarks = state.bookmarks;
            if self.allow_bookmarks {
                let object = json!({
                    "apiVersion": self.collection.api_version(),
                    "kind": self.collection.kind(),
                    "metadata": {"resourceVersion": state.rv.to_string()},
                });
                lines.push(event_line("BOOKMARK", &object));
                self.sent = state.rv;
                state.bookmarks_sent += 1;
            }
        }
        Step::Send(lines)
    }
}
