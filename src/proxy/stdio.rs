//! stdio MCP servers behind the gateway: the gateway starts the process (one shared, or
//! one per user), initializes it once itself, and bridges each Streamable HTTP request to
//! it: request ids and progress tokens are rewritten so that many clients can share one
//! process, answers and progress are routed back to the request that asked (as SSE when the
//! client accepts it), a client that goes away has its call cancelled, and a crashed process
//! fails its calls with a JSON-RPC error and is started again (with back-off) on demand.

use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::authorization::token::Principal;
use crate::clock::{SharedClock, Timestamp};

/// The protocol revision the gateway speaks to its stdio servers.
const CHILD_PROTOCOL: &str = "2025-06-18";
const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("the server process could not be started: {0}")]
    Start(String),
    #[error("the server process is restarting after a failure; retry in {0} s")]
    BackingOff(u64),
}

struct Waiter {
    tx: mpsc::UnboundedSender<Value>,
    original_id: Value,
    original_token: Option<Value>,
    owner: String,
}

/// One running server process.
struct Child {
    to_child: mpsc::UnboundedSender<String>,
    waiters: Mutex<HashMap<String, Waiter>>,
    init_result: Value,
    alive: AtomicBool,
    last_used: AtomicI64,
    counter: AtomicU64,
    kill: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Child {
    fn send(&self, msg: &Value) -> bool {
        self.to_child.send(msg.to_string()).is_ok()
    }

    fn fail_all(&self, message: &str) {
        let waiters: Vec<Waiter> = match self.waiters.lock() {
            Ok(mut m) => m.drain().map(|(_, w)| w).collect(),
            Err(_) => Vec::new(),
        };
        for w in waiters {
            let _ = w.tx.send(json!({"jsonrpc": "2.0", "id": w.original_id, "error": {"code": -32603, "message": message}}));
        }
    }

    /// A message from the process: an answer, a progress notification, or a request of its own.
    fn dispatch(&self, mut msg: Value) {
        let id = msg.get("id").cloned();
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string);
        match (id, method) {
            (Some(id), None) => {
                let key = id
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| id.to_string());
                let waiter = self.waiters.lock().ok().and_then(|mut m| m.remove(&key));
                if let Some(w) = waiter {
                    msg["id"] = w.original_id;
                    let _ = w.tx.send(msg);
                }
            }
            (None, Some(m)) if m == "notifications/progress" => {
                let token = msg
                    .pointer("/params/progressToken")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(key) = token.strip_prefix("gw-") else {
                    return;
                };
                if let Ok(m) = self.waiters.lock()
                    && let Some(w) = m.get(key)
                {
                    if let Some(t) = &w.original_token {
                        msg["params"]["progressToken"] = t.clone();
                    }
                    let _ = w.tx.send(msg);
                }
            }
            (Some(id), Some(m)) => {
                // Requests to the client (sampling, roots, elicitation) have no client to go to
                // on a stateless bridge.
                self.send(&json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": format!("`{m}` is not available through the gateway")}}));
            }
            _ => {}
        }
    }
}

/// Removes a request's waiter when its response stream ends early, and tells the process.
struct CallGuard {
    child: Arc<Child>,
    key: String,
    done: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let gone = self
            .child
            .waiters
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&self.key));
        if gone.is_some() {
            self.child.send(
                &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": self.key, "reason": "the client went away"}}),
            );
        }
    }
}

pub struct StdioServer {
    name: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    per_user: bool,
    per_user_env: BTreeMap<String, String>,
    idle_secs: i64,
    idle_timeout: Duration,
    clock: SharedClock,
    children: tokio::sync::Mutex<HashMap<String, Arc<Child>>>,
    /// Per process key: (failures in a row, earliest next start).
    backoff: Mutex<HashMap<String, (u32, Timestamp)>>,
}

impl std::fmt::Debug for StdioServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioServer")
            .field("name", &self.name)
            .field("command", &self.command)
            .finish()
    }
}

fn fill(template: &str, p: &Principal) -> String {
    template
        .replace("{user}", p.username.as_deref().unwrap_or(""))
        .replace("{user_id}", p.user_id.as_deref().unwrap_or(""))
        .replace("{client_id}", &p.client_id)
}

fn sse_event(msg: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl StdioServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        command: Vec<String>,
        env: BTreeMap<String, String>,
        per_user: bool,
        per_user_env: BTreeMap<String, String>,
        idle_secs: i64,
        idle_timeout: Duration,
        clock: SharedClock,
    ) -> Self {
        Self {
            name,
            command,
            env,
            per_user,
            per_user_env,
            idle_secs,
            idle_timeout,
            clock,
            children: tokio::sync::Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
        }
    }

    /// How many processes are running (for tests and metrics).
    pub async fn running(&self) -> usize {
        self.children
            .lock()
            .await
            .values()
            .filter(|c| c.alive.load(Ordering::SeqCst))
            .count()
    }

    /// Stops processes unused for `idle_secs`.
    pub async fn reap_idle(&self) {
        let now = self.clock.now();
        let mut children = self.children.lock().await;
        children.retain(|key, c| {
            let idle = now - c.last_used.load(Ordering::SeqCst) >= self.idle_secs;
            let busy = c.waiters.lock().map(|w| !w.is_empty()).unwrap_or(false);
            let keep = c.alive.load(Ordering::SeqCst) && (!idle || busy);
            if !keep {
                if let Ok(mut k) = c.kill.lock()
                    && let Some(tx) = k.take()
                {
                    let _ = tx.send(());
                }
                tracing::info!(upstream = %self.name, process = %key, "stdio server stopped (idle)");
            }
            keep
        });
    }

    async fn child_for(
        &self,
        p: &Principal,
        owner: &str,
        env: Vec<(String, String)>,
    ) -> Result<Arc<Child>, StdioError> {
        let mut key = if self.per_user {
            owner.to_string()
        } else {
            "shared".to_string()
        };
        // A process per distinct credential: one started with a person's old database
        // password is not handed their new sign-in.
        if !env.is_empty() {
            // Keyed by a salt of this process's: the key is logged, the values are secrets.
            static SALT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
            let mut h = sha2::Sha256::new();
            h.update(SALT.get_or_init(crate::crypto::random_bytes::<32>));
            for (k, v) in &env {
                h.update(k.as_bytes());
                h.update([0]);
                h.update(v.as_bytes());
                h.update([0]);
            }
            let digest = h.finalize();
            key.push('\n');
            key.push_str(&crate::crypto::hex(&digest[..16]));
        }
        let mut children = self.children.lock().await;
        if let Some(c) = children.get(&key)
            && c.alive.load(Ordering::SeqCst)
        {
            return Ok(c.clone());
        }
        let now = self.clock.now();
        if let Ok(b) = self.backoff.lock()
            && let Some((_, next)) = b.get(&key)
            && *next > now
        {
            return Err(StdioError::BackingOff((*next - now) as u64));
        }
        match self.spawn(p, &env).await {
            Ok(c) => {
                if let Ok(mut b) = self.backoff.lock() {
                    b.remove(&key);
                }
                children.insert(key, c.clone());
                Ok(c)
            }
            Err(e) => {
                if let Ok(mut b) = self.backoff.lock() {
                    let entry = b.entry(key).or_insert((0, now));
                    entry.0 += 1;
                    entry.1 = now + (1i64 << entry.0.min(5)).min(30);
                }
                tracing::warn!(upstream = %self.name, error = %e, "stdio server failed to start");
                Err(e)
            }
        }
    }

    async fn spawn(
        &self,
        p: &Principal,
        env: &[(String, String)],
    ) -> Result<Arc<Child>, StdioError> {
        let mut cmd = tokio::process::Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env_clear()
            .envs(
                std::env::vars()
                    .filter(|(k, _)| matches!(k.as_str(), "PATH" | "HOME" | "LANG" | "TMPDIR")),
            )
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.per_user {
            cmd.envs(self.per_user_env.iter().map(|(k, v)| (k, fill(v, p))));
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut proc = cmd.spawn().map_err(|e| StdioError::Start(e.to_string()))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (proc.stdin.take(), proc.stdout.take(), proc.stderr.take())
        else {
            return Err(StdioError::Start("no pipes".into()));
        };
        let mut lines = BufReader::with_capacity(64 * 1024, stdout).lines();
        // The gateway's own handshake with the process.
        let init = json!({"jsonrpc": "2.0", "id": "gw-init", "method": "initialize", "params": {
            "protocolVersion": CHILD_PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "mcp-oauth-gateway", "version": env!("CARGO_PKG_VERSION")}}});
        stdin
            .write_all(format!("{init}\n").as_bytes())
            .await
            .map_err(|e| StdioError::Start(e.to_string()))?;
        let init_result = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v.get("id").and_then(Value::as_str) == Some("gw-init")
                {
                    return v.get("result").cloned();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| StdioError::Start("it did not answer initialize".into()))?;
        stdin
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .await
            .map_err(|e| StdioError::Start(e.to_string()))?;
        let (to_child, mut from_gateway) = mpsc::unbounded_channel::<String>();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel();
        let child = Arc::new(Child {
            to_child,
            waiters: Mutex::new(HashMap::new()),
            init_result,
            alive: AtomicBool::new(true),
            last_used: AtomicI64::new(self.clock.now()),
            counter: AtomicU64::new(0),
            kill: Mutex::new(Some(kill_tx)),
        });
        tokio::spawn(async move {
            while let Some(line) = from_gateway.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err()
                    || stdin.write_all(b"\n").await.is_err()
                {
                    break;
                }
            }
        });
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(upstream = %name, "stderr: {}", line.chars().take(500).collect::<String>());
            }
        });
        let reader = child.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut kill_rx = kill_rx;
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(line)) if line.len() <= MAX_LINE => {
                            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                                reader.dispatch(v);
                            }
                        }
                        Ok(Some(_)) => tracing::warn!(upstream = %name, "dropped an oversized line"),
                        _ => break,
                    },
                    _ = &mut kill_rx => break,
                }
            }
            reader.alive.store(false, Ordering::SeqCst);
            let _ = proc.start_kill();
            let status = proc.wait().await;
            tracing::warn!(upstream = %name, ?status, "stdio server exited");
            reader.fail_all("the MCP server process exited");
        });
        tracing::info!(upstream = %self.name, "stdio server started");
        Ok(child)
    }

    /// Bridges one HTTP request.
    pub async fn handle(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: &[u8],
        p: &Principal,
        env: Vec<(String, String)>,
        in_flight: super::InFlight,
    ) -> Result<Response<Body>, StdioError> {
        let owner = super::owner_of(p);
        let owner = owner.as_str();
        if *method != Method::POST {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Ok(r);
        }
        let msg: Value = match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => Value::Object(m),
            Ok(_) => {
                return Ok(json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32600, "message": "one JSON-RPC message per request (no batches) for stdio servers"}}),
                ));
            }
            Err(e) => {
                return Ok(json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": format!("invalid JSON: {e}")}}),
                ));
            }
        };
        let child = self.child_for(p, owner, env).await?;
        child.last_used.store(self.clock.now(), Ordering::SeqCst);
        let id = msg.get("id").cloned();
        let method_name = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(id) = id.filter(|_| !method_name.is_empty()) else {
            // Notifications (and stray responses): the handshake is the gateway's own;
            // cancellations are mapped to the process's request ids.
            if method_name == "notifications/cancelled"
                && let Some(orig) = msg.pointer("/params/requestId")
            {
                let key = child.waiters.lock().ok().and_then(|m| {
                    m.iter()
                        .find(|(_, w)| &w.original_id == orig && w.owner == owner)
                        .map(|(k, _)| k.clone())
                });
                if let Some(key) = key {
                    let mut m = msg.clone();
                    m["params"]["requestId"] = json!(key);
                    child.send(&m);
                }
            } else if !method_name.is_empty() && method_name != "notifications/initialized" {
                child.send(&msg);
            }
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::ACCEPTED;
            return Ok(r);
        };
        match method_name.as_str() {
            "initialize" => {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"jsonrpc": "2.0", "id": id, "result": child.init_result}),
                ));
            }
            "ping" => {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"jsonrpc": "2.0", "id": id, "result": {}}),
                ));
            }
            _ => {}
        }
        let key = format!("{}", child.counter.fetch_add(1, Ordering::SeqCst));
        let mut out = msg.clone();
        out["id"] = json!(key);
        let original_token = msg.pointer("/params/_meta/progressToken").cloned();
        if original_token.is_some() {
            out["params"]["_meta"]["progressToken"] = json!(format!("gw-{key}"));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut m) = child.waiters.lock() {
            m.insert(
                key.clone(),
                Waiter {
                    tx,
                    original_id: id.clone(),
                    original_token,
                    owner: owner.to_string(),
                },
            );
        }
        let mut guard = CallGuard {
            child: child.clone(),
            key,
            done: false,
        };
        if !child.send(&out) {
            child.fail_all("the MCP server process exited");
        }
        let wants_sse = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
        let idle = self.idle_timeout;
        if !wants_sse {
            loop {
                match tokio::time::timeout(idle, rx.recv()).await {
                    Ok(Some(m)) if m.get("id").is_some() => {
                        guard.done = true;
                        return Ok(json_response(StatusCode::OK, &m));
                    }
                    Ok(Some(_)) => continue,
                    _ => {
                        return Ok(json_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            &json!({"jsonrpc": "2.0", "id": id,
                            "error": {"code": -32603, "message": "the MCP server did not answer in time"}}),
                        ));
                    }
                }
            }
        }
        let stream = futures_util::stream::unfold(
            (rx, Some(guard), in_flight, id),
            move |(mut rx, guard, flight, id)| async move {
                let mut guard = guard?;
                match tokio::time::timeout(idle, rx.recv()).await {
                    Ok(Some(m)) => {
                        let last = m.get("id").is_some();
                        if last {
                            guard.done = true;
                        }
                        let next = if last { None } else { Some(guard) };
                        Some((
                            Ok::<Bytes, std::io::Error>(sse_event(&m)),
                            (rx, next, flight, id),
                        ))
                    }
                    _ => {
                        let err = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": "the MCP server did not answer in time"}});
                        Some((Ok(sse_event(&err)), (rx, None, flight, id)))
                    }
                }
            },
        );
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(r)
    }
}
