//! The tracker: `track` writes the event to the durable queue and returns; a
//! background task sends queued events in batches and removes them from the
//! queue only once the server has answered for them.
//!
//! Every event gets a UUIDv7 id and a timestamp when it is tracked, so a batch
//! sent again after a timeout, a lost answer or a restart is recognised by the
//! server as duplicates: nothing is lost and nothing is counted twice.
//!
//! Delivery rules:
//! - accepted or duplicate: done, removed from the queue;
//! - rejected (a per-event verdict): removed, counted and reported through
//!   [`TrackerConfig::on_rejected`]; never retried, since it would fail again;
//! - the whole request is invalid (e.g. over the server's batch limit): the
//!   batch is removed and reported the same way;
//! - unavailable, overloaded, timed out, or a bad or revoked key: the batch
//!   stays and is retried with exponential backoff and full jitter, capped,
//!   waiting at least the server's `RetryInfo` delay.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use tally_proto::v1;
use tokio::sync::{Notify, watch};

use crate::client::Client;
use crate::error::{BuildError, TrackError};
use crate::queue::{DiskQueue, PushOutcome, QueueConfig, QueueError};

/// Device, app and SDK facts sent with every event.
#[derive(Clone, Debug, Default)]
pub struct AppContext {
    /// SDK name, e.g. "tally-rust".
    pub sdk_name: String,
    /// SDK version.
    pub sdk_version: String,
    /// App version, e.g. "4.1.0".
    pub app_version: String,
    /// App build number.
    pub app_build: String,
    /// BCP 47 locale, e.g. "de-DE".
    pub locale: String,
    /// OS name, e.g. "Android".
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Device model.
    pub device_model: String,
    /// Device manufacturer.
    pub device_manufacturer: String,
    /// Screen width in logical pixels.
    pub screen_width: i32,
    /// Screen height in logical pixels.
    pub screen_height: i32,
    /// Screen density.
    pub screen_density: f64,
    /// IANA time zone of the device.
    pub time_zone: String,
}

impl AppContext {
    fn to_proto(&self) -> v1::Context {
        v1::Context {
            sdk_name: if self.sdk_name.is_empty() {
                "tally-rust".into()
            } else {
                self.sdk_name.clone()
            },
            sdk_version: if self.sdk_version.is_empty() {
                env!("CARGO_PKG_VERSION").into()
            } else {
                self.sdk_version.clone()
            },
            app_version: self.app_version.clone(),
            app_build: self.app_build.clone(),
            locale: self.locale.clone(),
            os_name: self.os_name.clone(),
            os_version: self.os_version.clone(),
            device_model: self.device_model.clone(),
            device_manufacturer: self.device_manufacturer.clone(),
            screen: (self.screen_width > 0).then_some(v1::Screen {
                width: self.screen_width,
                height: self.screen_height,
                density: self.screen_density,
            }),
            time_zone: self.time_zone.clone(),
            ..Default::default()
        }
    }
}

/// Backoff between retries: exponential, full jitter, capped.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Upper bound of the first delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based): uniform in
    /// `[0, min(max, initial * 2^attempt)]`, but at least `server_hint`.
    pub fn delay(&self, attempt: u32, server_hint: Option<Duration>) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let jittered = ceiling.mul_f64(rand::random::<f64>());
        jittered.max(server_hint.unwrap_or_default())
    }
}

/// An event the server rejected, as reported to [`TrackerConfig::on_rejected`].
#[derive(Clone, Debug)]
pub struct Rejected {
    /// The event's id.
    pub event_id: String,
    /// Why.
    pub reason: v1::RejectReason,
    /// The offending field.
    pub field: String,
    /// The server's explanation.
    pub message: String,
}

/// Called for every event dropped because the server rejected it.
pub type RejectionHandler = Arc<dyn Fn(&Rejected) + Send + Sync>;

/// Tracker settings.
#[derive(Clone)]
pub struct TrackerConfig {
    /// Server endpoint, e.g. `https://tally.example.com`.
    pub endpoint: String,
    /// Ingest key of the site.
    pub key: String,
    /// Site id; empty uses the key's site.
    pub site_id: String,
    /// Directory of the durable queue (and the anonymous id).
    pub queue_dir: PathBuf,
    /// Most events kept waiting; newer events are dropped and counted when full. Default 10,000.
    pub max_queue_events: usize,
    /// Events per request. Default 20.
    pub batch_size: usize,
    /// Longest time an event waits before a send is attempted. Default 10 s.
    pub flush_interval: Duration,
    /// Inactivity after which a new client session starts. Default 30 minutes.
    pub session_timeout: Duration,
    /// Backoff between retries.
    pub retry: RetryPolicy,
    /// Time allowed for one request. Default 30 s.
    pub request_timeout: Duration,
    /// Device and app facts.
    pub context: AppContext,
    /// Receives every rejected event.
    pub on_rejected: Option<RejectionHandler>,
}

impl TrackerConfig {
    /// Settings with defaults for `endpoint`, `key` and `queue_dir`.
    pub fn new(endpoint: impl Into<String>, key: impl Into<String>, queue_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: endpoint.into(),
            key: key.into(),
            site_id: String::new(),
            queue_dir: queue_dir.into(),
            max_queue_events: 10_000,
            batch_size: 20,
            flush_interval: Duration::from_secs(10),
            session_timeout: Duration::from_secs(30 * 60),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            context: AppContext::default(),
            on_rejected: None,
        }
    }
}

/// What to track: build with [`TrackEvent::custom`], [`TrackEvent::pageview`] or [`TrackEvent::screen`].
#[derive(Clone, Debug, Default)]
pub struct TrackEvent {
    event: v1::Event,
}

impl TrackEvent {
    /// A custom event, e.g. `"purchase"`.
    pub fn custom(name: impl Into<String>) -> Self {
        Self {
            event: v1::Event {
                r#type: v1::EventType::Custom as i32,
                name: name.into(),
                ..Default::default()
            },
        }
    }

    /// A page view of `url`.
    pub fn pageview(url: impl Into<String>) -> Self {
        Self {
            event: v1::Event {
                r#type: v1::EventType::Pageview as i32,
                url: url.into(),
                ..Default::default()
            },
        }
    }

    /// A screen view of `screen`.
    pub fn screen(screen: impl Into<String>) -> Self {
        let event = v1::Event {
            r#type: v1::EventType::ScreenView as i32,
            screen: screen.into(),
            ..Default::default()
        };
        Self { event }
    }

    /// Adds a string property.
    pub fn prop(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let value = v1::property_value::Value::StringValue(value.into());
        self.event
            .properties
            .insert(key.into(), v1::PropertyValue { value: Some(value) });
        self
    }

    /// Adds a number property.
    pub fn number(mut self, key: impl Into<String>, value: f64) -> Self {
        let value = v1::property_value::Value::NumberValue(value);
        self.event
            .properties
            .insert(key.into(), v1::PropertyValue { value: Some(value) });
        self
    }

    /// Adds a boolean property.
    pub fn flag(mut self, key: impl Into<String>, value: bool) -> Self {
        let value = v1::property_value::Value::BoolValue(value);
        self.event
            .properties
            .insert(key.into(), v1::PropertyValue { value: Some(value) });
        self
    }

    /// Attaches revenue in `currency` (ISO 4217), as units and nanos.
    pub fn revenue(mut self, currency: impl Into<String>, units: i64, nanos: i32) -> Self {
        self.event.revenue = Some(v1::Money {
            currency_code: currency.into(),
            units,
            nanos,
        });
        self
    }

    /// Sets the referrer.
    pub fn referrer(mut self, referrer: impl Into<String>) -> Self {
        self.event.referrer = referrer.into();
        self
    }

    /// Marks the event as not counting as engagement.
    pub fn non_interaction(mut self) -> Self {
        self.event.non_interaction = true;
        self
    }
}

/// Why `track` did not queue an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackRefused {
    /// Tracking is off ([`Tracker::set_opt_out`]).
    #[error("tracking is opted out")]
    OptedOut,
    /// The queue is full; the event was dropped and counted.
    #[error("the queue is full; the event was dropped")]
    QueueFull,
    /// The queue could not be written.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The tracker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The client settings are invalid.
    #[error(transparent)]
    Client(#[from] BuildError),
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Waiting for delivery did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// The deadline passed with events still queued (they stay queued).
    #[error("{pending} events still queued at the deadline")]
    Timeout {
        /// Events still waiting.
        pending: usize,
    },
    /// The tracker was shut down.
    #[error("the tracker is shut down")]
    ShutDown,
}

/// Counters of a tracker since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Events waiting in the queue.
    pub queued: usize,
    /// Events the server accepted (or already had).
    pub delivered: u64,
    /// Events the server rejected (dropped and reported).
    pub rejected: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Failed send attempts (each retried later).
    pub failed_attempts: u64,
}

struct Session {
    id: String,
    /// True until the first event of this session is tracked.
    fresh: bool,
    last_activity: SystemTime,
    /// Set while the app is in the background.
    background_since: Option<SystemTime>,
}

struct Shared {
    config: TrackerConfig,
    client: Client,
    queue: Mutex<DiskQueue>,
    anonymous_id: String,
    context: Mutex<v1::Context>,
    user_id: Mutex<String>,
    session: Mutex<Session>,
    opted_out: std::sync::atomic::AtomicBool,
    /// Wakes the sender: a batch is full, a flush was asked for, or shutdown.
    wake: Notify,
    /// Bumped by `flush`; the sender sends at once while it is ahead of `flushed`.
    flush_requests: AtomicU64,
    /// Queue length after each send attempt, for `flush` to wait on.
    queued: watch::Sender<usize>,
    shutdown: watch::Sender<bool>,
    delivered: AtomicU64,
    rejected: AtomicU64,
    failed_attempts: AtomicU64,
}

/// Tracks events durably and delivers them in the background.
pub struct Tracker {
    shared: Arc<Shared>,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Tracker {
    /// Opens the queue (recovering what a previous run left) and starts the
    /// background sender on the current tokio runtime.
    pub fn start(config: TrackerConfig) -> Result<Self, StartError> {
        let client = Client::builder(config.endpoint.clone())
            .key(config.key.clone())
            .request_timeout(config.request_timeout)
            .build()?;
        let (queue, recovery) = DiskQueue::open(
            &config.queue_dir,
            &QueueConfig {
                max_events: config.max_queue_events,
            },
        )?;
        if recovery.pending > 0 || recovery.torn_bytes > 0 {
            tracing::info!(
                pending = recovery.pending,
                torn_bytes = recovery.torn_bytes,
                "tracker queue recovered"
            );
        }
        let anonymous_id = load_or_create_id(&config.queue_dir.join("anonymous_id"))?;
        let opted_out = config.queue_dir.join("opted_out").exists();
        let now = SystemTime::now();
        let pending = queue.len();
        let shared = Arc::new(Shared {
            context: Mutex::new(config.context.to_proto()),
            session: Mutex::new(Session {
                id: uuid::Uuid::now_v7().to_string(),
                fresh: true,
                last_activity: now,
                background_since: None,
            }),
            config,
            client,
            queue: Mutex::new(queue),
            anonymous_id,
            user_id: Mutex::new(String::new()),
            opted_out: std::sync::atomic::AtomicBool::new(opted_out),
            wake: Notify::new(),
            flush_requests: AtomicU64::new(0),
            queued: watch::channel(pending).0,
            shutdown: watch::channel(false).0,
            delivered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
        });
        let sender = tokio::spawn(send_loop(shared.clone()));
        Ok(Self {
            shared,
            sender: Mutex::new(Some(sender)),
        })
    }

    /// Queues an event; returns once it is on disk, never waiting for the network.
    pub fn track(&self, event: TrackEvent) -> Result<String, TrackRefused> {
        let shared = &self.shared;
        if shared.opted_out.load(Ordering::Acquire) {
            return Err(TrackRefused::OptedOut);
        }
        let now = SystemTime::now();
        let mut event = event.event;
        event.event_id = uuid::Uuid::now_v7().to_string();
        event.timestamp = Some(prost_types::Timestamp::from(now));
        event.anonymous_id = shared.anonymous_id.clone();
        event.user_id = lock(&shared.user_id).clone();
        let (session_id, session_start) = shared.touch_session(now);
        event.session = Some(v1::SessionHint {
            session_id,
            session_start,
        });
        event.context = Some(lock(&shared.context).clone());
        let id = event.event_id.clone();
        let outcome = {
            let mut queue = lock(&shared.queue);
            let outcome = queue.push(&event.encode_to_vec())?;
            shared.queued.send_replace(queue.len());
            if queue.len() >= shared.config.batch_size {
                shared.wake.notify_one();
            }
            outcome
        };
        match outcome {
            PushOutcome::Queued => Ok(id),
            PushOutcome::Dropped => Err(TrackRefused::QueueFull),
        }
    }

    /// Sets (or clears, with "") the user id attached to later events.
    pub fn identify(&self, user_id: impl Into<String>) {
        *lock(&self.shared.user_id) = user_id.into();
    }

    /// Replaces the app context attached to later events.
    pub fn set_context(&self, context: AppContext) {
        *lock(&self.shared.context) = context.to_proto();
    }

    /// The client session id events are tagged with now.
    pub fn session_id(&self) -> String {
        lock(&self.shared.session).id.clone()
    }

    /// The app went to the background: send what is queued now.
    pub fn on_background(&self) {
        lock(&self.shared.session).background_since = Some(SystemTime::now());
        self.request_send();
    }

    /// The app came back: a new session starts if it was away longer than the session timeout.
    pub fn on_foreground(&self) {
        let now = SystemTime::now();
        let mut session = lock(&self.shared.session);
        if let Some(since) = session.background_since.take() {
            let away = now.duration_since(since).unwrap_or_default();
            if away > self.shared.config.session_timeout {
                session.id = uuid::Uuid::now_v7().to_string();
                session.fresh = true;
            }
            session.last_activity = now;
        }
    }

    /// Opting out stops tracking and deletes every queued event; opting back in resumes.
    /// The choice is remembered across restarts.
    pub fn set_opt_out(&self, opted_out: bool) -> Result<(), QueueError> {
        let marker = self.shared.config.queue_dir.join("opted_out");
        let io = |source| QueueError::Io {
            path: marker.clone(),
            source,
        };
        self.shared.opted_out.store(opted_out, Ordering::Release);
        if opted_out {
            std::fs::write(&marker, b"").map_err(io)?;
            let mut queue = lock(&self.shared.queue);
            queue.clear()?;
            self.shared.queued.send_replace(0);
        } else if marker.exists() {
            std::fs::remove_file(&marker).map_err(io)?;
        }
        Ok(())
    }

    /// True while tracking is opted out ([`Tracker::set_opt_out`]).
    pub fn is_opted_out(&self) -> bool {
        self.shared.opted_out.load(Ordering::Acquire)
    }

    /// Counters since start.
    pub fn stats(&self) -> TrackerStats {
        let shared = &self.shared;
        let queue = lock(&shared.queue);
        TrackerStats {
            queued: queue.len(),
            delivered: shared.delivered.load(Ordering::Relaxed),
            rejected: shared.rejected.load(Ordering::Relaxed),
            dropped: queue.dropped(),
            failed_attempts: shared.failed_attempts.load(Ordering::Relaxed),
        }
    }

    fn request_send(&self) {
        self.shared.flush_requests.fetch_add(1, Ordering::AcqRel);
        self.shared.wake.notify_one();
    }

    /// Sends everything queued now and waits until the queue is empty, or
    /// `timeout` passes (the events then stay queued for later).
    pub async fn flush(&self, timeout: Duration) -> Result<(), FlushError> {
        self.request_send();
        let mut queued = self.shared.queued.subscribe();
        let wait = queued.wait_for(|n| *n == 0);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(FlushError::ShutDown),
            Err(_) => Err(FlushError::Timeout {
                pending: lock(&self.shared.queue).len(),
            }),
        }
    }

    /// Tries to deliver what is queued until `deadline`, then stops the
    /// sender. Whatever is not delivered stays queued for the next start.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), FlushError> {
        let flushed = self.flush(deadline).await;
        self.shared.shutdown.send_replace(true);
        self.shared.wake.notify_one();
        let sender = lock(&self.sender).take();
        if let Some(sender) = sender {
            let _ = sender.await;
        }
        let _ = lock(&self.shared.queue).sync();
        flushed
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    /// The session id for an event at `now` (rotated after inactivity), and
    /// whether the event is the session's first.
    fn touch_session(&self, now: SystemTime) -> (String, bool) {
        let mut session = lock(&self.session);
        let idle = now.duration_since(session.last_activity).unwrap_or_default();
        if idle > self.config.session_timeout {
            session.id = uuid::Uuid::now_v7().to_string();
            session.fresh = true;
        }
        session.last_activity = now;
        let first = std::mem::replace(&mut session.fresh, false);
        (session.id.clone(), first)
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Decodes the first `batch_size` queued events.
    fn next_batch(&self) -> Vec<v1::Event> {
        let queue = lock(&self.queue);
        queue
            .peek(self.config.batch_size.max(1))
            .map(|bytes| v1::Event::decode(bytes).unwrap_or_default())
            .collect()
    }

    /// Removes `n` delivered or dropped events from the head of the queue.
    fn ack(&self, n: usize) {
        let mut queue = lock(&self.queue);
        if let Err(err) = queue.ack(n) {
            tracing::error!(error = %err, "tracker queue ack failed");
        }
        self.queued.send_replace(queue.len());
    }

    fn report(&self, rejected: Rejected) {
        tracing::warn!(event_id = %rejected.event_id, reason = ?rejected.reason, field = %rejected.field, message = %rejected.message, "event rejected by the server");
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(handler) = &self.config.on_rejected {
            handler(&rejected);
        }
    }
}

/// Sends batches until shutdown.
async fn send_loop(shared: Arc<Shared>) {
    let mut attempt: u32 = 0;
    let mut shutdown = shared.shutdown.subscribe();
    let mut served_flushes = 0;
    // After a failed attempt and its backoff, the batch is sent again at once.
    let mut retry_now = false;
    loop {
        // Opted out: nothing to send (the queue was cleared), so just wait.
        let queued = match shared.opted_out.load(Ordering::Acquire) {
            true => 0,
            false => lock(&shared.queue).len(),
        };
        let flush_asked = shared.flush_requests.load(Ordering::Acquire) != served_flushes;
        if shared.stopping() {
            return;
        }
        if queued == 0 || (queued < shared.config.batch_size && !flush_asked && !retry_now) {
            // Wait for a full batch, a flush, the interval (if anything waits), or shutdown.
            let interval = async {
                match queued {
                    0 => std::future::pending::<()>().await,
                    _ => tokio::time::sleep(shared.config.flush_interval).await,
                }
            };
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = interval => {}
                _ = shutdown.changed() => {}
            }
            if lock(&shared.queue).is_empty() {
                served_flushes = shared.flush_requests.load(Ordering::Acquire);
                continue;
            }
        }
        served_flushes = shared.flush_requests.load(Ordering::Acquire);
        let batch = shared.next_batch();
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        // Only the ids are needed after the send, to name rejected events.
        let ids: Vec<String> = batch.iter().map(|e| e.event_id.clone()).collect();
        let request = v1::TrackRequest {
            site_id: shared.config.site_id.clone(),
            events: batch,
        };
        retry_now = false;
        // Shutdown does not wait for an answer: the batch stays queued and is
        // sent again next time, where the server recognises it.
        let sent = tokio::select! {
            sent = shared.client.track(request) => sent,
            _ = shutdown.changed() => return,
        };
        match sent {
            Ok(response) => {
                attempt = 0;
                for result in &response.results {
                    if result.verdict() == v1::Verdict::Rejected {
                        let event_id = ids.get(result.index as usize).cloned().unwrap_or_default();
                        shared.report(Rejected {
                            event_id,
                            reason: result.reason(),
                            field: result.field.clone(),
                            message: result.message.clone(),
                        });
                    }
                }
                let delivered = i64::from(response.accepted) + i64::from(response.duplicates);
                shared
                    .delivered
                    .fetch_add(delivered.max(0) as u64, Ordering::Relaxed);
                shared.ack(n);
            }
            Err(TrackError::Invalid { message, .. }) => {
                // The request as a whole can never succeed: drop it and say so.
                attempt = 0;
                for event_id in ids {
                    shared.report(Rejected {
                        event_id,
                        reason: v1::RejectReason::Unspecified,
                        field: String::new(),
                        message: message.clone(),
                    });
                }
                shared.ack(n);
            }
            Err(err) => {
                shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let delay = shared.config.retry.delay(attempt, err.retry_after());
                attempt = attempt.saturating_add(1);
                tracing::debug!(error = %err, ?delay, attempt, "send failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                retry_now = true;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn load_or_create_id(path: &std::path::Path) -> Result<String, QueueError> {
    let io = |source| QueueError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &id).map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_jittered_and_honours_the_server() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for attempt in 0..40 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(5));
            for _ in 0..50 {
                let delay = policy.delay(attempt, None);
                assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
            }
        }
        let samples: Vec<Duration> = (0..200).map(|_| policy.delay(10, None)).collect();
        assert!(
            samples.iter().any(|d| *d < Duration::from_millis(2500)),
            "full jitter spreads delays"
        );
        assert!(policy.delay(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
