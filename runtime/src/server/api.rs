use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use warden_wire::manifest::DimSpec;
use warden_wire::reading::SignedReading;

use super::AppState;
use crate::audit::AuditEntry;
use crate::error::{Error, SandboxError};
use crate::kserve::{InferRequest, InferResponse, ResponseTensor};
use crate::runtime::Model;
use crate::trust::{ReadingError, reading_to_input};

/// An error answered as `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::Input(_) | Error::Request(_) => StatusCode::BAD_REQUEST,
            Error::Sandbox(SandboxError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Error::Sandbox(SandboxError::Guest { kind: crate::GuestErrorKind::Input, .. }) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
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
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Records the request's outcome in the audit log, durably, before it is answered. If the log
/// cannot take it, the request is answered 503 instead: nothing is acknowledged unrecorded.
async fn audited(
    state: &Arc<AppState>,
    mut entry: AuditEntry,
    result: ApiResult<InferResponse>,
) -> ApiResult<axum::Json<InferResponse>> {
    match &result {
        Ok(response) => {
            entry.outcome = "ok".into();
            entry.output_sha256 = serde_json::to_vec(response).ok().map(|b| sha256_hex(&b));
        }
        Err(ApiError(status, message)) => entry.outcome = format!("{} {message}", status.as_u16()),
    }
    let state = state.clone();
    match tokio::task::spawn_blocking(move || state.audit.append(&entry)).await {
        Ok(Ok(_)) => result.map(axum::Json),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "audit append failed; refusing to answer");
            Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit log unavailable; request not acknowledged".into(),
            ))
        }
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("audit task failed: {e}"))),
    }
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
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn model(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Model> {
    let version = version
        .map(|v| {
            v.parse::<u64>().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("bad version {v:?}")))
        })
        .transpose()?;
    state.repository.get(name, version).ok_or_else(|| {
        let what = version.map_or_else(|| name.to_string(), |v| format!("{name} version {v}"));
        ApiError(StatusCode::NOT_FOUND, format!("unknown model {what}"))
    })
}

fn body(bytes: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    bytes.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body too large".to_string()
        } else {
            r.body_text()
        };
        ApiError(status, message)
    })
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(
        json!({ "name": "warden", "version": env!("CARGO_PKG_VERSION"), "extensions": ["model_repository"] }),
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
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let model = model(&state, &name, None)?;
    Ok(axum::Json(describe(&state, &model)))
}

async fn metadata_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    let model = model(&state, &name, Some(&version))?;
    Ok(axum::Json(describe(&state, &model)))
}

async fn ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<axum::Json<Value>> {
    model(&state, &name, None)?;
    Ok(axum::Json(json!({ "name": name, "ready": true })))
}

async fn ready_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    model(&state, &name, Some(&version))?;
    Ok(axum::Json(json!({ "name": name, "ready": true })))
}

async fn index(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    let entries: Vec<Value> = state
        .repository
        .index()
        .into_iter()
        .map(|(name, v)| json!({ "name": name, "version": v.to_string(), "state": "READY" }))
        .collect();
    axum::Json(Value::Array(entries))
}

async fn run_infer(model: Model, bytes: Bytes) -> ApiResult<InferResponse> {
    let response = tokio::task::spawn_blocking(move || -> ApiResult<InferResponse> {
        let request = InferRequest::from_json(&bytes)?;
        let mut outputs = model.infer(request.tensors()?)?;
        if let Some(wanted) = &request.outputs {
            if let Some(w) = wanted.iter().find(|w| !outputs.iter().any(|o| o.name == w.name)) {
                return Err(ApiError(StatusCode::BAD_REQUEST, format!("unknown output {:?}", w.name)));
            }
            outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
        }
        Ok(InferResponse {
            model_name: model.manifest().name.clone(),
            model_version: model.manifest().version.to_string(),
            id: request.id,
            outputs: outputs.iter().map(ResponseTensor::from_tensor).collect(),
        })
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("inference task failed: {e}")))??;
    Ok(response)
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<InferResponse>> {
    infer_at(&state, &name, None, bytes).await
}

async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<InferResponse>> {
    infer_at(&state, &name, Some(&version), bytes).await
}

/// One audited KServe inference against `name` (at `version`, or the highest one).
async fn infer_at(
    state: &Arc<AppState>,
    name: &str,
    version: Option<&str>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<InferResponse>> {
    let mut entry = entry_for(name, &bytes);
    let result = match model(state, name, version) {
        Ok(m) => {
            note_model(&mut entry, &m);
            match body(bytes) {
                Ok(b) => run_infer(m, b).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    audited(state, entry, result).await
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
/// `{"reading": "<base64 of the postcard bytes>"}`. Answers with the inference.
async fn readings(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ReadingsQuery>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<InferResponse>> {
    let mut entry = entry_for("", &bytes);
    entry.model = query.model.clone();
    let result = reading(&state, &query, &headers, bytes, &mut entry).await;
    audited(&state, entry, result).await
}

async fn reading(
    state: &Arc<AppState>,
    query: &ReadingsQuery,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
    entry: &mut AuditEntry,
) -> ApiResult<InferResponse> {
    let bytes = body(bytes)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let raw = if is_json {
        let doc: ReadingJson = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad reading JSON: {e}")))?;
        base64::engine::general_purpose::STANDARD
            .decode(doc.reading.as_bytes())
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad base64: {e}")))?
    } else {
        bytes.to_vec()
    };
    let signed = SignedReading::decode(&raw).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    entry.device = Some(signed.reading.device_id.to_string());
    let model = match &query.model {
        Some(name) => model(state, name, None)?,
        None => {
            let mut candidates = state.repository.reading_models();
            if candidates.len() != 1 {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("{} models take readings: name one with ?model=NAME", candidates.len()),
                ));
            }
            candidates.remove(0)
        }
    };
    entry.model = Some(model.manifest().name.clone());
    note_model(entry, &model);
    if model.manifest().readings.is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("model {} takes no readings", model.manifest().name),
        ));
    }
    let state2 = state.clone();
    let response = tokio::task::spawn_blocking(move || -> ApiResult<InferResponse> {
        // Shape first (no state change), then verification, which records the counter.
        let input = reading_to_input(model.manifest(), &signed)?;
        state2.verifier.verify(&signed, std::time::SystemTime::now())?;
        let outputs = model.infer(vec![input])?;
        Ok(InferResponse {
            model_name: model.manifest().name.clone(),
            model_version: model.manifest().version.to_string(),
            id: Some(format!("{}:{}", signed.reading.device_id, signed.reading.counter)),
            outputs: outputs.iter().map(ResponseTensor::from_tensor).collect(),
        })
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading task failed: {e}")))??;
    Ok(response)
}
