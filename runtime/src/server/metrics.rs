//! Prometheus metrics, served at `/metrics` in the text exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `infer` or `readings`.
    pub endpoint: &'static str,
    /// The model, or empty when none was resolved.
    pub model: String,
    /// The HTTP status answered.
    pub code: u16,
}

/// Labels naming an endpoint and model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// `infer` or `readings`.
    pub endpoint: &'static str,
    /// The model.
    pub model: String,
}

/// Labels of a refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why: `unauthenticated`, `forbidden`, `rate_limited`, `budget`, `queue_full`, `too_large`,
    /// `bad_request`, `unknown_model`, `reading`, `audit`.
    pub reason: &'static str,
}

/// Labels of a sandbox failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxLabels {
    /// The model.
    pub model: String,
    /// `trap`, `timeout` or `memory_cap`.
    pub kind: &'static str,
}

/// Labels naming a model version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The model.
    pub model: String,
    /// Its version.
    pub version: String,
}

/// Labels of the queue depth gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The model.
    pub model: String,
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by endpoint, model and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request to answer, by endpoint and model.
    pub latency: Family<ModelLabels, Histogram>,
    /// Requests refused before or instead of inference, by reason.
    pub refusals: Family<ReasonLabels, Counter>,
    /// Requests refused by a rate limit or budget.
    pub rate_limited: Counter,
    /// Calls the sandbox stopped, by model and kind.
    pub sandbox_failures: Family<SandboxLabels, Counter>,
    /// Requests running or waiting per model.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Audit records appended by this process.
    pub audit_records: Counter,
    /// Audit-log writes (one fsync each) by this process, brought up to date at each scrape.
    pub audit_syncs: Counter,
    /// Sandbox runs (inferences that reached the sandbox) per model version, brought up to date
    /// at each scrape.
    pub model_runs: Family<VersionLabels, Counter>,
    /// Of those, the runs that followed another on the same instance, queued behind it.
    pub model_runs_in_a_row: Family<VersionLabels, Counter>,
    /// Model versions being served.
    pub models_loaded: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 us .. ~26 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<ModelLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let refusals = Family::<ReasonLabels, Counter>::default();
        let rate_limited = Counter::default();
        let sandbox_failures = Family::<SandboxLabels, Counter>::default();
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        let audit_records = Counter::default();
        let audit_syncs = Counter::default();
        let model_runs = Family::<VersionLabels, Counter>::default();
        let model_runs_in_a_row = Family::<VersionLabels, Counter>::default();
        let models_loaded = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint, model and HTTP status",
            requests.clone(),
        );
        registry.register("request_duration_seconds", "Time from request to answer", latency.clone());
        registry.register("refusals", "Requests refused, by reason", refusals.clone());
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit or query budget",
            rate_limited.clone(),
        );
        registry.register(
            "sandbox_failures",
            "Sandbox calls stopped by a trap, the deadline or the memory cap",
            sandbox_failures.clone(),
        );
        registry.register("queue_depth", "Requests running or waiting, per model", queue_depth.clone());
        registry.register("audit_records", "Audit records appended by this process", audit_records.clone());
        registry.register(
            "audit_syncs",
            "Audit log writes by this process, one fsync each (audit_records per audit_syncs share one)",
            audit_syncs.clone(),
        );
        registry.register("model_runs", "Sandbox runs, per model version", model_runs.clone());
        registry.register(
            "model_runs_in_a_row",
            "Sandbox runs that followed another on the same instance, queued behind it",
            model_runs_in_a_row.clone(),
        );
        registry.register("models_loaded", "Model versions being served", models_loaded.clone());
        Metrics {
            registry,
            requests,
            latency,
            refusals,
            rate_limited,
            sandbox_failures,
            queue_depth,
            audit_records,
            audit_syncs,
            model_runs,
            model_runs_in_a_row,
            models_loaded,
        }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
