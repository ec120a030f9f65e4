use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use warden_wire::manifest::DimSpec;
use warden_wire::reading::SignedReading;

use super::AppState;
use super::limits::{LimitError, Reservation};
use super::metrics::{ModelLabels, QueueLabels, ReasonLabels, RequestLabels, SandboxLabels, VersionLabels};
use super::tokens::TokenRecord;
use crate::audit::{ANONYMOUS, AuditEntry, sha256_hex};
use crate::error::{Error, SandboxError};
use crate::kserve::{HEADER_LENGTH, InferRequest, InferResponse, ResponseBody};
use crate::runtime::Model;
use crate::tensor::Tensor;
use crate::trust::{ReadingError, reading_to_input};

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// Counted under `warden_refusals_total{reason}`; empty for sandbox and server failures.
    reason: &'static str,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), reason, retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.reason == "unauthenticated" {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"warden\""));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, reason) = match &e {
            Error::Input(_) | Error::Request(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Sandbox(SandboxError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, ""),
            Error::Sandbox(SandboxError::Guest { kind: crate::GuestErrorKind::Input, .. }) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ""),
        };
        ApiError::new(status, reason, e.to_string())
    }
}

impl From<ReadingError> for ApiError {
    fn from(e: ReadingError) -> ApiError {
        let status = match &e {
            ReadingError::UnknownDevice(_) | ReadingError::UnknownKey(_) | ReadingError::BadSignature(_) => {
                StatusCode::UNAUTHORIZED
            }
            ReadingError::RevokedDevice(_) => StatusCode::FORBIDDEN,
            ReadingError::Replay { .. } => StatusCode::CONFLICT,
            ReadingError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "reading", e.to_string())
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> ApiError {
        let (status, reason, retry_after) = match &e {
            LimitError::RateLimited { retry_after, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some(*retry_after))
            }
            LimitError::BudgetExhausted { .. } => (StatusCode::TOO_MANY_REQUESTS, "budget", None),
            LimitError::QueueFull(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "queue_full", Some(Duration::from_secs(1)))
            }
        };
        ApiError { status, message: e.to_string(), reason, retry_after }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// An inference answer: JSON, or JSON followed by binary tensor data.
#[derive(Debug)]
struct Reply(ResponseBody);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let ResponseBody { bytes, header_len } = self.0;
        match header_len {
            None => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
                .into_response(),
            Some(n) => (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
                    (HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(n)),
                ],
                bytes,
            )
                .into_response(),
        }
    }
}

/// Records the request's outcome in the audit log, durably, before it is answered, and counts it
/// in the metrics. If the log cannot take it, the request is answered 503 instead: nothing is
/// acknowledged unrecorded.
async fn audited(
    state: &Arc<AppState>,
    endpoint: &'static str,
    started: Instant,
    entry: AuditEntry,
    result: ApiResult<Reply>,
) -> Response {
    let model = metrics_label(&entry);
    let result = audit_now(state, entry, result).await;
    respond(state, endpoint, started, model, result)
}

/// The model label of a request's metrics. Only resolved models label metrics: request paths
/// must not grow the label set.
fn metrics_label(entry: &AuditEntry) -> String {
    entry.version.as_ref().and(entry.model.clone()).unwrap_or_default()
}

/// Appends the request's audit record (resolving once it is durable, without holding a thread)
/// and returns the answer to give: `result`, or 503 if the log could not take the record.
async fn audit_now(
    state: &Arc<AppState>,
    mut entry: AuditEntry,
    result: ApiResult<Reply>,
) -> ApiResult<Reply> {
    match &result {
        Ok(reply) => {
            entry.outcome = "ok".into();
            entry.output_sha256 = Some(sha256_hex(&reply.0.bytes));
        }
        Err(e) => entry.outcome = format!("{} {}", e.status.as_u16(), e.message),
    }
    match state.audit.append_async(&entry).await {
        Ok(_) => {
            state.metrics.audit_records.inc();
            result
        }
        Err(e) => {
            tracing::error!(error = %e, "audit append failed; refusing to answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit",
                "audit log unavailable; request not acknowledged",
            ))
        }
    }
}

/// Counts the answer in the metrics and renders it.
fn respond(
    state: &AppState,
    endpoint: &'static str,
    started: Instant,
    model: String,
    result: ApiResult<Reply>,
) -> Response {
    let metrics = &state.metrics;
    let code = match &result {
        Ok(_) => 200,
        Err(e) => {
            if !e.reason.is_empty() {
                metrics.refusals.get_or_create(&ReasonLabels { reason: e.reason }).inc();
            }
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                metrics.rate_limited.inc();
            }
            e.status.as_u16()
        }
    };
    metrics.requests.get_or_create(&RequestLabels { endpoint, model: model.clone(), code }).inc();
    metrics.latency.get_or_create(&ModelLabels { endpoint, model }).observe(started.elapsed().as_secs_f64());
    result.into_response()
}

fn entry_for(name: &str, bytes: &Result<Bytes, BytesRejection>) -> AuditEntry {
    AuditEntry {
        model: Some(name.to_string()),
        input_sha256: bytes.as_ref().ok().map(|b| sha256_hex(b)),
        ..AuditEntry::default()
    }
}

fn note_model(entry: &mut AuditEntry, model: &Model) {
    entry.version = Some(model.manifest().version.to_string());
    entry.model_sha256 = Some(model.manifest().model_sha256.clone());
}

/// Who is calling: a token's record, or nobody (tokens not required).
#[derive(Debug)]
struct Client(Option<TokenRecord>);

impl Client {
    /// The key rate limits and budgets are kept under.
    fn key(&self) -> &str {
        self.0.as_ref().map_or(ANONYMOUS, |r| r.name.as_str())
    }

    fn may_call(&self, model: &str) -> ApiResult<()> {
        match &self.0 {
            Some(r) if !r.allows(model) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {:?} may not call model {model:?}", r.name),
            )),
            _ => Ok(()),
        }
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Client> {
    if !state.auth.required() {
        return Ok(Client(None));
    }
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state
        .auth
        .authenticate(header)
        .map(|r| Client(Some(r)))
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))
}

pub(super) fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v2/health/live", get(|| async { axum::Json(json!({ "live": true })) }))
        .route("/v2/health/ready", get(|| async { axum::Json(json!({ "ready": true })) }))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/versions/{version}", get(metadata_version))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(ready_version))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .route("/v2/repository/index", post(index))
        .route("/v1/readings", post(readings))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "", "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn model(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Model> {
    let version = version
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("bad version {v:?}"))
            })
        })
        .transpose()?;
    state.repository.get(name, version).ok_or_else(|| {
        let what = version.map_or_else(|| name.to_string(), |v| format!("{name} version {v}"));
        ApiError::new(StatusCode::NOT_FOUND, "unknown_model", format!("unknown model {what}"))
    })
}

/// A model the caller may see: authenticated, in its token's scope, loaded.
fn visible_model(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    version: Option<&str>,
) -> ApiResult<Model> {
    authenticate(state, headers)?.may_call(name)?;
    model(state, name, version)
}

fn body(bytes: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    bytes.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "too_large", "request body too large")
        } else {
            ApiError::new(status, "bad_request", r.body_text())
        }
    })
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(
        json!({ "name": "warden", "version": env!("CARGO_PKG_VERSION"), "extensions": ["model_repository", "binary_tensor_data"] }),
    )
}

fn tensor_metadata(name: &str, dtype: warden_wire::DType, shape: &[DimSpec]) -> Value {
    let shape: Vec<i64> = shape
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
            DimSpec::Named(_) => -1,
        })
        .collect();
    json!({ "name": name, "datatype": dtype.kserve_name(), "shape": shape })
}

fn describe(state: &AppState, model: &Model) -> Value {
    let m = model.manifest();
    let versions: Vec<String> = state.repository.versions(&m.name).iter().map(u64::to_string).collect();
    json!({
        "name": m.name,
        "versions": versions,
        "platform": "onnx_onnxv1",
        "inputs": m.inputs.iter().map(|i| tensor_metadata(&i.name, i.dtype, &i.shape)).collect::<Vec<_>>(),
        "outputs": m.outputs.iter().map(|o| tensor_metadata(&o.name, o.dtype, &o.shape)).collect::<Vec<_>>(),
    })
}

async fn metadata(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let model = visible_model(&state, &headers, &name, None)?;
    Ok(axum::Json(describe(&state, &model)))
}

async fn metadata_version(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    let model = visible_model(&state, &headers, &name, Some(&version))?;
    Ok(axum::Json(describe(&state, &model)))
}

async fn ready(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    visible_model(&state, &headers, &name, None)?;
    Ok(axum::Json(json!({ "name": name, "ready": true })))
}

async fn ready_version(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    visible_model(&state, &headers, &name, Some(&version))?;
    Ok(axum::Json(json!({ "name": name, "ready": true })))
}

/// The repository index: the models the caller's token may call.
async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<axum::Json<Value>> {
    let client = authenticate(&state, &headers)?;
    let entries: Vec<Value> = state
        .repository
        .index()
        .into_iter()
        .filter(|(name, _)| client.may_call(name).is_ok())
        .map(|(name, v)| json!({ "name": name, "version": v.to_string(), "state": "READY" }))
        .collect();
    Ok(axum::Json(Value::Array(entries)))
}

/// Prometheus metrics; behind a token when tokens are required.
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&state, &headers)?;
    let metrics = &state.metrics;
    let models = state.repository.models();
    for (model, depth) in state.limits.queue_depths(&models) {
        metrics.queue_depth.get_or_create(&QueueLabels { model }).set(depth as i64);
    }
    // The counts kept elsewhere only grow (a model's per version), so taking the larger value
    // never moves a counter back, even with scrapes racing.
    for model in &models {
        let m = model.manifest();
        let labels = VersionLabels { model: m.name.clone(), version: m.version.to_string() };
        metrics.model_runs.get_or_create(&labels).inner().fetch_max(model.sandbox_runs(), Ordering::Relaxed);
        let in_a_row = metrics.model_runs_in_a_row.get_or_create(&labels);
        in_a_row.inner().fetch_max(model.runs_in_a_row(), Ordering::Relaxed);
    }
    metrics.audit_syncs.inner().fetch_max(state.audit.syncs(), Ordering::Relaxed);
    metrics.models_loaded.set(state.repository.index().len() as i64);
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        metrics.render(),
    )
        .into_response())
}

fn count_sandbox_failure(state: &AppState, model: &str, e: &Error) {
    let kind = match e {
        Error::Sandbox(SandboxError::Timeout(_)) => "timeout",
        Error::Sandbox(SandboxError::MemoryCap(_)) => "memory_cap",
        Error::Sandbox(SandboxError::Trap(_)) => "trap",
        _ => return,
    };
    state.metrics.sandbox_failures.get_or_create(&SandboxLabels { model: model.to_owned(), kind }).inc();
}

/// Runs `inputs` through `model` (validation, sandbox, output policy), counting sandbox
/// failures: in the model's runner task, back to back with the runs queued beside it
/// (`Model::infer_async`).
async fn run_model(state: &AppState, model: &Model, inputs: Vec<Tensor>) -> ApiResult<Vec<Tensor>> {
    model.infer_async(inputs).await.map_err(|e| {
        count_sandbox_failure(state, &model.manifest().name, &e);
        ApiError::from(e)
    })
}

async fn infer(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    infer_at(&state, &headers, &name, None, bytes).await
}

async fn infer_version(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    infer_at(&state, &headers, &name, Some(&version), bytes).await
}

/// One audited KServe inference against `name` (at `version`, or the highest one).
async fn infer_at(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    name: &str,
    version: Option<&str>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut entry = entry_for(name, &bytes);
    match kserve_infer(state, headers, name, version, bytes, &mut entry).await {
        Ok(Audited { label, result }) => respond(state, "infer", started, label, result),
        Err(refused) => audited(state, "infer", started, entry, Err(refused)).await,
    }
}

async fn kserve_infer(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    name: &str,
    version: Option<&str>,
    bytes: Result<Bytes, BytesRejection>,
    entry: &mut AuditEntry,
) -> ApiResult<Audited> {
    let client = authenticate(state, headers)?;
    entry.client = client.0.as_ref().map(|r| r.name.clone());
    client.may_call(name)?;
    let model = model(state, name, version)?;
    note_model(entry, &model);
    state.limits.check_client(client.key())?;
    let budget = state.limits.admit(client.key(), &model)?;
    let _queued = state.limits.enqueue(&model)?;
    let bytes = body(bytes)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let mut lengths = headers.get_all(HEADER_LENGTH).iter();
    let header_len = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(bad(format!("more than one {HEADER_LENGTH} header"))),
        (Some(v), None) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| bad(format!("bad {HEADER_LENGTH} header")))?,
        ),
    };
    let request = InferRequest::from_body(&bytes, header_len).map_err(ApiError::from)?;
    let inputs = request.tensors()?;
    answer_audited(state, entry, budget, async move |state, _| {
        let outputs = run_model(state, &model, inputs).await?;
        encode(&model, &request, outputs)
    })
    .await
}

/// Answers: `work` (the model run and the encoding, given the audit entry to note what it did),
/// then the durable audit record. The query budget is charged only for an answered request.
async fn answer_audited(
    state: &Arc<AppState>,
    entry: &mut AuditEntry,
    budget: Reservation<'_>,
    work: impl AsyncFnOnce(&AppState, &mut AuditEntry) -> ApiResult<Reply>,
) -> ApiResult<Audited> {
    let (label, mut entry) = (metrics_label(entry), std::mem::take(entry));
    // A panic is answered 500 and audited with what the request noted before it.
    let result = AssertUnwindSafe(work(state, &mut entry)).catch_unwind().await.unwrap_or_else(|_| {
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", "inference task panicked"))
    });
    let result = audit_now(state, entry, result).await;
    if result.is_ok() {
        budget.commit();
    }
    Ok(Audited { label, result })
}

/// The KServe answer: the outputs the request asked for (all by default), in JSON or binary.
fn encode(model: &Model, request: &InferRequest, mut outputs: Vec<Tensor>) -> ApiResult<Reply> {
    if let Some(wanted) = &request.outputs {
        if let Some(w) = wanted.iter().find(|w| !outputs.iter().any(|o| o.name == w.name)) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown output {:?}", w.name),
            ));
        }
        outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
    }
    let m = model.manifest();
    let reply =
        InferResponse::encode(m.name.clone(), m.version.to_string(), request.id.clone(), &outputs, |n| {
            request.wants_binary(n)
        });
    Ok(Reply(reply))
}

#[derive(Debug, Deserialize)]
struct ReadingsQuery {
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReadingJson {
    /// Base64 of the postcard bytes of a `SignedReading` (no COBS framing).
    reading: String,
}

/// `POST /v1/readings[?model=NAME]`: a signed reading as raw postcard bytes, or JSON
/// `{"reading": "<base64 of the postcard bytes>"}`. Answers with the inference. The device's
/// signature authenticates the request; no bearer token is needed.
async fn readings(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ReadingsQuery>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut entry = entry_for("", &bytes);
    entry.model = query.model.clone();
    match reading(&state, &query, &headers, bytes, &mut entry).await {
        Ok(Audited { label, result }) => respond(&state, "readings", started, label, result),
        Err(refused) => audited(&state, "readings", started, entry, Err(refused)).await,
    }
}

/// The answer to a request whose audit record is already durable.
struct Audited {
    label: String,
    result: ApiResult<Reply>,
}

async fn reading(
    state: &Arc<AppState>,
    query: &ReadingsQuery,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
    entry: &mut AuditEntry,
) -> ApiResult<Audited> {
    let bytes = body(bytes)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let raw = if is_json {
        let doc: ReadingJson =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("bad reading JSON: {e}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(doc.reading.as_bytes())
            .map_err(|e| bad(format!("bad base64: {e}")))?
    } else {
        bytes.to_vec()
    };
    let signed = SignedReading::decode(&raw).map_err(|e| bad(e.to_string()))?;
    let device = signed.reading.device_id.to_string();
    entry.device = Some(device.clone());
    let model = match &query.model {
        Some(name) => model(state, name, None)?,
        None => {
            let mut candidates = state.repository.reading_models();
            if candidates.len() != 1 {
                return Err(bad(format!(
                    "{} models take readings: name one with ?model=NAME",
                    candidates.len()
                )));
            }
            candidates.remove(0)
        }
    };
    entry.model = Some(model.manifest().name.clone());
    note_model(entry, &model);
    if model.manifest().readings.is_none() {
        return Err(bad(format!("model {} takes no readings", model.manifest().name)));
    }
    // Shape first and the signature next (no state change), then the limits, and only then is
    // the counter recorded: a refused reading never uses up its counter.
    let input = reading_to_input(model.manifest(), &signed)?;
    state.verifier.authenticate(&signed, std::time::SystemTime::now())?;
    let key = format!("device:{device}");
    state.limits.check_device(&device)?;
    let budget = state.limits.admit(&key, &model)?;
    let _queued = state.limits.enqueue(&model)?;
    // The counter is taken (written, not synced), and durable once the audit record (which
    // carries it) is: before the answer, with one fsync for both.
    answer_audited(state, entry, budget, async move |state, entry| {
        state.verifier.record_unsynced(&signed).map_err(ApiError::from)?;
        entry.counter = Some(signed.reading.counter);
        let outputs = run_model(state, &model, vec![input]).await?;
        let m = model.manifest();
        let id = Some(format!("{}:{}", signed.reading.device_id, signed.reading.counter));
        Ok(Reply(InferResponse::encode(m.name.clone(), m.version.to_string(), id, &outputs, |_| false)))
    })
    .await
}
