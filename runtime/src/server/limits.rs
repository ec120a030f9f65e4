//! Abuse limits: request rates (governor, GCRA) per client and model from the signed manifest,
//! host-wide rates per client and per device from the config, total query budgets, and a bounded
//! queue per model.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::runtime::Model;

/// Why a request was refused by a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// Over a request rate; try again after the given time.
    #[error("rate limit exceeded ({what}); retry after {}s", retry_after.as_secs_f64().ceil())]
    RateLimited {
        /// Which limit.
        what: &'static str,
        /// When a request would conform again.
        retry_after: Duration,
    },
    /// The client has used up the model's total query budget.
    #[error("query budget exhausted: {used} of {total} queries used on this model version")]
    BudgetExhausted {
        /// Queries answered so far.
        used: u64,
        /// The manifest's `total_queries`.
        total: u64,
    },
    /// Every instance is busy and the model's queue is full.
    #[error("model {0} is busy: its queue is full")]
    QueueFull(String),
}

/// Host-wide limits from the config (the manifest's apply per model on top).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Requests per minute one client (token) may make across all models. By default unlimited.
    pub client_requests_per_minute: Option<u32>,
    /// Readings per minute one device may send. By default 600.
    pub device_readings_per_minute: Option<u32>,
    /// Requests that may wait for an instance, per model, beyond those running. By default 64.
    pub queue_depth: usize,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            client_requests_per_minute: None,
            device_readings_per_minute: Some(600),
            queue_depth: 64,
        }
    }
}

type ModelKey = (String, u64);

/// The limiter state of a running daemon.
#[derive(Debug)]
pub struct Limits {
    host: HostLimits,
    clock: DefaultClock,
    per_client: Option<DefaultKeyedRateLimiter<String>>,
    per_device: Option<DefaultKeyedRateLimiter<String>>,
    per_model: Mutex<HashMap<ModelKey, Arc<Option<DefaultKeyedRateLimiter<String>>>>>,
    /// Queries answered per (client, model, version), seeded from the audit log.
    used: Mutex<HashMap<(String, String, u64), u64>>,
    queues: Mutex<HashMap<ModelKey, Arc<Semaphore>>>,
}

fn per_minute(rpm: u32, burst: Option<u32>) -> Option<Quota> {
    let rpm = NonZeroU32::new(rpm)?;
    let quota = Quota::per_minute(rpm);
    Some(match burst.and_then(NonZeroU32::new) {
        Some(b) => quota.allow_burst(b),
        None => quota,
    })
}

/// A budget reservation: released (refunded) on drop unless the query was answered.
#[derive(Debug)]
pub struct Reservation<'a> {
    limits: &'a Limits,
    key: Option<(String, String, u64)>,
}

impl Reservation<'_> {
    /// The query was answered: it stays charged.
    pub fn commit(mut self) {
        self.key = None;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut used = self.limits.used.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = used.get_mut(&key) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Limits {
    /// Limits with `used` queries per (client, model, version) already answered (from the audit
    /// log, so budgets survive restarts).
    pub fn new(host: HostLimits, used: HashMap<(String, String, u64), u64>) -> Limits {
        let keyed = |rpm: Option<u32>| rpm.and_then(|r| per_minute(r, None)).map(RateLimiter::keyed);
        Limits {
            host,
            clock: DefaultClock::default(),
            per_client: keyed(host.client_requests_per_minute),
            per_device: keyed(host.device_readings_per_minute),
            per_model: Mutex::new(HashMap::new()),
            used: Mutex::new(used),
            queues: Mutex::new(HashMap::new()),
        }
    }

    fn check(
        &self,
        limiter: &DefaultKeyedRateLimiter<String>,
        key: &str,
        what: &'static str,
    ) -> Result<(), LimitError> {
        limiter.check_key(&key.to_owned()).map_err(|not_until| LimitError::RateLimited {
            what,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Checks the host-wide rate of `client`.
    pub fn check_client(&self, client: &str) -> Result<(), LimitError> {
        match &self.per_client {
            Some(l) => self.check(l, client, "per client"),
            None => Ok(()),
        }
    }

    /// Checks the host-wide rate of `device`.
    pub fn check_device(&self, device: &str) -> Result<(), LimitError> {
        match &self.per_device {
            Some(l) => self.check(l, device, "per device"),
            None => Ok(()),
        }
    }

    /// Checks the manifest's rate for `client` on `model`, then reserves one query of its
    /// budget (refunded if the reservation is dropped uncommitted).
    pub fn admit(&self, client: &str, model: &Model) -> Result<Reservation<'_>, LimitError> {
        let m = model.manifest();
        let key = (m.name.clone(), m.version);
        let limiter = {
            let mut map = self.per_model.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key)
                .or_insert_with(|| {
                    Arc::new(
                        m.limits
                            .requests_per_minute
                            .and_then(|rpm| per_minute(rpm, m.limits.burst))
                            .map(RateLimiter::keyed),
                    )
                })
                .clone()
        };
        if let Some(l) = limiter.as_ref() {
            self.check(l, client, "the model's requests_per_minute")?;
        }
        let Some(total) = m.limits.total_queries else {
            return Ok(Reservation { limits: self, key: None });
        };
        let key = (client.to_owned(), m.name.clone(), m.version);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let n = used.entry(key.clone()).or_insert(0);
        if *n >= total {
            return Err(LimitError::BudgetExhausted { used: *n, total });
        }
        *n += 1;
        Ok(Reservation { limits: self, key: Some(key) })
    }

    /// A place in `model`'s queue (running or waiting), or [`LimitError::QueueFull`].
    pub fn enqueue(&self, model: &Model) -> Result<OwnedSemaphorePermit, LimitError> {
        let m = model.manifest();
        let semaphore = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues
                .entry((m.name.clone(), m.version))
                .or_insert_with(|| Arc::new(Semaphore::new(model.max_instances() + self.host.queue_depth)))
                .clone()
        };
        semaphore.try_acquire_owned().map_err(|_| LimitError::QueueFull(m.name.clone()))
    }

    /// Requests running or queued per model (for the metrics).
    pub fn queue_depths(&self, models: &[Model]) -> Vec<(String, u64)> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .map(|model| {
                let m = model.manifest();
                let depth = queues.get(&(m.name.clone(), m.version)).map_or(0, |s| {
                    (model.max_instances() + self.host.queue_depth).saturating_sub(s.available_permits())
                });
                (m.name.clone(), depth as u64)
            })
            .collect()
    }

    /// Forgets rate-limiter state of clients idle long enough to be back at full burst.
    pub fn shrink(&self) {
        for l in [&self.per_client, &self.per_device].into_iter().flatten() {
            l.retain_recent();
        }
        for l in self.per_model.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if let Some(l) = l.as_ref() {
                l.retain_recent();
            }
        }
    }
}
