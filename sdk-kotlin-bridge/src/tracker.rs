//! The exported tracker: `tally_sdk::Tracker` behind records the bindings can
//! express. `track` writes to the durable queue and returns; delivery,
//! batching and retries happen in the SDK's background sender.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::TallyError;
use crate::runtime::runtime;

/// Tracker settings. Only `endpoint`, `key` and `queue_dir` are required;
/// every other field left unset keeps the SDK's default.
#[derive(Clone, Debug, uniffi::Record)]
pub struct TrackerConfig {
    /// Server endpoint, e.g. `https://tally.example.com` (TLS for `https://`).
    pub endpoint: String,
    /// The site's ingest key (`tly_ing_…`); public, safe to ship in an app.
    pub key: String,
    /// Directory of the durable queue, e.g. under the app's no-backup files.
    pub queue_dir: String,
    /// Site id; unset uses the key's site.
    #[uniffi(default = None)]
    pub site_id: Option<String>,
    /// Events per request. Default 20.
    #[uniffi(default = None)]
    pub batch_size: Option<u32>,
    /// Longest time an event waits before a send is attempted. Default 10 s.
    #[uniffi(default = None)]
    pub flush_interval: Option<Duration>,
    /// Most events kept waiting; newer events are dropped and counted when full. Default 10,000.
    #[uniffi(default = None)]
    pub max_queue_events: Option<u32>,
    /// Inactivity (or time in the background) after which a new session starts. Default 30 min.
    #[uniffi(default = None)]
    pub session_timeout: Option<Duration>,
    /// Time allowed for one request. Default 30 s.
    #[uniffi(default = None)]
    pub request_timeout: Option<Duration>,
    /// Upper bound of the first retry delay. Default 1 s.
    #[uniffi(default = None)]
    pub retry_initial: Option<Duration>,
    /// Largest retry delay. Default 60 s.
    #[uniffi(default = None)]
    pub retry_max: Option<Duration>,
    /// Device and app facts sent with every event.
    #[uniffi(default = None)]
    pub context: Option<AppContext>,
}

impl TrackerConfig {
    fn into_sdk(self) -> tally_sdk::TrackerConfig {
        let mut config = tally_sdk::TrackerConfig::new(self.endpoint, self.key, self.queue_dir);
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        config.site_id = self.site_id.unwrap_or_default();
        config.batch_size = self.batch_size.map_or(config.batch_size, count);
        config.max_queue_events = self.max_queue_events.map_or(config.max_queue_events, count);
        config.flush_interval = self.flush_interval.unwrap_or(config.flush_interval);
        config.session_timeout = self.session_timeout.unwrap_or(config.session_timeout);
        config.request_timeout = self.request_timeout.unwrap_or(config.request_timeout);
        config.retry.initial = self.retry_initial.unwrap_or(config.retry.initial);
        config.retry.max = self.retry_max.unwrap_or(config.retry.max);
        config.context = self.context.map(AppContext::into_sdk).unwrap_or_default();
        config
    }
}

/// Device, app and SDK facts sent with every event. Empty fields are not sent.
#[derive(Clone, Debug, Default, uniffi::Record)]
pub struct AppContext {
    /// SDK name, e.g. "tally-kotlin".
    #[uniffi(default = "")]
    pub sdk_name: String,
    /// SDK version.
    #[uniffi(default = "")]
    pub sdk_version: String,
    /// App version, e.g. "4.1.0".
    #[uniffi(default = "")]
    pub app_version: String,
    /// App build number.
    #[uniffi(default = "")]
    pub app_build: String,
    /// BCP 47 locale, e.g. "de-DE".
    #[uniffi(default = "")]
    pub locale: String,
    /// OS name, e.g. "Android".
    #[uniffi(default = "")]
    pub os_name: String,
    /// OS version.
    #[uniffi(default = "")]
    pub os_version: String,
    /// Device model.
    #[uniffi(default = "")]
    pub device_model: String,
    /// Device manufacturer.
    #[uniffi(default = "")]
    pub device_manufacturer: String,
    /// Screen width in logical pixels.
    #[uniffi(default = 0)]
    pub screen_width: i32,
    /// Screen height in logical pixels.
    #[uniffi(default = 0)]
    pub screen_height: i32,
    /// Screen density.
    #[uniffi(default = 0.0)]
    pub screen_density: f64,
    /// IANA time zone of the device.
    #[uniffi(default = "")]
    pub time_zone: String,
}

impl AppContext {
    fn into_sdk(self) -> tally_sdk::AppContext {
        let Self {
            sdk_name,
            sdk_version,
            app_version,
            app_build,
            locale,
            os_name,
            os_version,
            device_model,
            device_manufacturer,
            screen_width,
            screen_height,
            screen_density,
            time_zone,
        } = self;
        tally_sdk::AppContext {
            sdk_name,
            sdk_version,
            app_version,
            app_build,
            locale,
            os_name,
            os_version,
            device_model,
            device_manufacturer,
            screen_width,
            screen_height,
            screen_density,
            time_zone,
        }
    }
}

/// What kind of event, with what it names.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum EventKind {
    /// A custom event, e.g. "purchase".
    Custom {
        /// Event name.
        name: String,
    },
    /// A screen view, e.g. "Checkout".
    Screen {
        /// Screen name.
        name: String,
    },
    /// A page view of a URL (web content in an app).
    Pageview {
        /// The page URL.
        url: String,
    },
}

/// A typed property value.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum PropertyValue {
    /// Text.
    Text {
        /// The value.
        value: String,
    },
    /// A number.
    Number {
        /// The value.
        value: f64,
    },
    /// A boolean.
    Flag {
        /// The value.
        value: bool,
    },
}

/// An amount of money: `units` plus `nanos` billionths, in an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Revenue {
    /// ISO 4217 code, e.g. "EUR".
    pub currency: String,
    /// Whole units.
    pub units: i64,
    /// Billionths of a unit, with the sign of `units`.
    pub nanos: i32,
}

/// An event to track. The tracker adds the id, timestamp, visitor, session and context.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Event {
    /// Custom event, screen view or page view.
    pub kind: EventKind,
    /// Up to 50 typed properties.
    #[uniffi(default)]
    pub properties: HashMap<String, PropertyValue>,
    /// Revenue attached to the event.
    #[uniffi(default = None)]
    pub revenue: Option<Revenue>,
    /// Referrer, e.g. a deep link's source.
    #[uniffi(default = None)]
    pub referrer: Option<String>,
    /// True for events that do not count as engagement.
    #[uniffi(default = false)]
    pub non_interaction: bool,
}

impl Event {
    fn into_sdk(self) -> tally_sdk::TrackEvent {
        let mut event = match self.kind {
            EventKind::Custom { name } => tally_sdk::TrackEvent::custom(name),
            EventKind::Screen { name } => tally_sdk::TrackEvent::screen(name),
            EventKind::Pageview { url } => tally_sdk::TrackEvent::pageview(url),
        };
        for (key, value) in self.properties {
            event = match value {
                PropertyValue::Text { value } => event.prop(key, value),
                PropertyValue::Number { value } => event.number(key, value),
                PropertyValue::Flag { value } => event.flag(key, value),
            };
        }
        if let Some(Revenue {
            currency,
            units,
            nanos,
        }) = self.revenue
        {
            event = event.revenue(currency, units, nanos);
        }
        if let Some(referrer) = self.referrer {
            event = event.referrer(referrer);
        }
        if self.non_interaction {
            event = event.non_interaction();
        }
        event
    }
}

/// Counters of a tracker since it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TrackerStats {
    /// Events waiting in the queue.
    pub queued: u64,
    /// Events the server accepted (or already had).
    pub delivered: u64,
    /// Events the server rejected (dropped and reported).
    pub rejected: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Failed send attempts (each retried later).
    pub failed_attempts: u64,
}

impl From<tally_sdk::TrackerStats> for TrackerStats {
    fn from(stats: tally_sdk::TrackerStats) -> Self {
        Self {
            queued: stats.queued as u64,
            delivered: stats.delivered,
            rejected: stats.rejected,
            dropped: stats.dropped,
            failed_attempts: stats.failed_attempts,
        }
    }
}

/// An event the server rejected: it is dropped, never retried, since it
/// would fail again.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RejectedEvent {
    /// The id `track` returned.
    pub event_id: String,
    /// The reason code, e.g. "REJECT_REASON_INVALID_URL".
    pub reason: String,
    /// The offending field, e.g. "url".
    pub field: String,
    /// The server's explanation.
    pub message: String,
}

impl From<&tally_sdk::Rejected> for RejectedEvent {
    fn from(rejected: &tally_sdk::Rejected) -> Self {
        Self {
            event_id: rejected.event_id.clone(),
            reason: rejected.reason.as_str_name().to_owned(),
            field: rejected.field.clone(),
            message: rejected.message.clone(),
        }
    }
}

/// Told about every event the server rejects, implemented in Kotlin or Swift.
#[uniffi::export(with_foreign)]
pub trait RejectionListener: Send + Sync {
    /// Called on the SDK's background thread; keep it short.
    fn on_rejected(&self, rejected: RejectedEvent);
}

/// Tracks events durably and delivers them in the background. No method
/// waits for the network: `track` returns once the event is on disk, and
/// `flush` / `shutdown` are async.
#[derive(uniffi::Object)]
pub struct Tracker {
    inner: tally_sdk::Tracker,
}

#[uniffi::export]
impl Tracker {
    /// Opens the queue in `config.queue_dir` (delivering what an earlier run
    /// left there) and starts the background sender. `on_rejected` hears of
    /// every event the server rejects.
    #[uniffi::constructor(default(on_rejected = None))]
    pub fn new(
        config: TrackerConfig,
        on_rejected: Option<Arc<dyn RejectionListener>>,
    ) -> Result<Arc<Self>, TallyError> {
        let mut config = config.into_sdk();
        config.on_rejected = on_rejected.map(|listener| -> tally_sdk::RejectionHandler {
            Arc::new(move |rejected| listener.on_rejected(rejected.into()))
        });
        let _runtime = runtime().enter();
        let inner = tally_sdk::Tracker::start(config)?;
        Ok(Arc::new(Self { inner }))
    }

    /// Queues an event and returns its id, once it is on disk.
    pub fn track(&self, event: Event) -> Result<String, TallyError> {
        Ok(self.inner.track(event.into_sdk())?)
    }

    /// Sets (or, with `None`, clears) the user id attached to later events.
    pub fn identify(&self, user_id: Option<String>) {
        self.inner.identify(user_id.unwrap_or_default())
    }

    /// Replaces the app context attached to later events.
    pub fn set_context(&self, context: AppContext) {
        self.inner.set_context(context.into_sdk())
    }

    /// The app went to the background: send what is queued now.
    pub fn on_background(&self) {
        self.inner.on_background()
    }

    /// The app came back: a new session starts if it was away longer than the session timeout.
    pub fn on_foreground(&self) {
        self.inner.on_foreground()
    }

    /// Opting out stops tracking and deletes queued events; opting back in
    /// resumes. The choice is remembered in the queue directory.
    pub fn set_opt_out(&self, opted_out: bool) -> Result<(), TallyError> {
        Ok(self.inner.set_opt_out(opted_out)?)
    }

    /// True while tracking is opted out.
    pub fn is_opted_out(&self) -> bool {
        self.inner.is_opted_out()
    }

    /// The client session id events are tagged with now.
    pub fn session_id(&self) -> String {
        self.inner.session_id()
    }

    /// Counters since start.
    pub fn stats(&self) -> TrackerStats {
        self.inner.stats().into()
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Tracker {
    /// Sends everything queued now and waits until the queue is empty, or
    /// fails with `Unavailable` after `timeout` (the events stay queued).
    pub async fn flush(&self, timeout: Duration) -> Result<(), TallyError> {
        Ok(self.inner.flush(timeout).await?)
    }

    /// Tries to deliver what is queued for up to `timeout`, then stops the
    /// sender. What is not delivered stays queued for the next start.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), TallyError> {
        Ok(self.inner.shutdown(timeout).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_settings_keep_the_sdk_defaults() {
        let config = TrackerConfig {
            endpoint: "http://127.0.0.1:1".into(),
            key: "tly_ing_x".into(),
            queue_dir: "/tmp/q".into(),
            site_id: None,
            batch_size: Some(5),
            flush_interval: None,
            max_queue_events: None,
            session_timeout: None,
            request_timeout: None,
            retry_initial: Some(Duration::from_millis(10)),
            retry_max: None,
            context: None,
        };
        let defaults = tally_sdk::TrackerConfig::new("", "", "");
        let sdk = config.into_sdk();
        assert_eq!(sdk.batch_size, 5);
        assert_eq!(sdk.retry.initial, Duration::from_millis(10));
        assert_eq!(sdk.flush_interval, defaults.flush_interval);
        assert_eq!(sdk.max_queue_events, defaults.max_queue_events);
        assert_eq!(sdk.retry.max, defaults.retry.max);
        assert_eq!(sdk.site_id, "");
    }

    #[test]
    fn a_rejection_names_its_reason_code() {
        let rejected = tally_sdk::Rejected {
            event_id: "e1".into(),
            reason: tally_sdk::proto::RejectReason::InvalidUrl,
            field: "url".into(),
            message: "url must be an http(s) URL".into(),
        };
        let event = RejectedEvent::from(&rejected);
        assert_eq!(event.reason, "REJECT_REASON_INVALID_URL");
        assert_eq!((event.event_id.as_str(), event.field.as_str()), ("e1", "url"));
    }
}
