//! Domain types shared by every layer: identifiers, the stored event, sites and keys.
//!
//! Stored records derive `prost::Message` so that what lands on disk (or in
//! Cassandra blobs) is a versionable Protobuf encoding, independent of the
//! public `tally.v1` contracts.

use std::fmt;

use crate::error::Error;

/// A site identifier: lower-case letters, digits, `.`, `-` and `_`, 1-64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId(String);

impl SiteId {
    /// Validates and wraps a site id.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::invalid("site_id", "site_id is required"));
        }
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        if raw.is_empty() || raw.len() > 64 || !raw.chars().all(valid_char) {
            return Err(Error::invalid(
                "site_id",
                format!("site id {raw:?} must be 1-64 characters of a-z, 0-9, '.', '-' and '_'"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-generated event id (a UUID; v7 recommended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub uuid::Uuid);

impl EventId {
    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A pseudonymous visitor id: a keyed 64-bit hash, never an IP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VisitorId(pub u64);

impl fmt::Display for VisitorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Kinds of events, numbered as `tally.v1.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum EventKind {
    /// A web page view.
    Pageview = 1,
    /// A custom event.
    Custom = 2,
    /// A mobile screen view.
    ScreenView = 3,
    /// Links an anonymous visitor to a user id.
    Identify = 4,
    /// Engagement without navigation.
    Engagement = 5,
}

impl EventKind {
    /// Maps the wire number; `None` for unknown or unspecified.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Pageview,
            2 => Self::Custom,
            3 => Self::ScreenView,
            4 => Self::Identify,
            5 => Self::Engagement,
            _ => return None,
        })
    }

    /// Lower-case name used as a dimension value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pageview => "pageview",
            Self::Custom => "custom",
            Self::ScreenView => "screen_view",
            Self::Identify => "identify",
            Self::Engagement => "engagement",
        }
    }

    /// Page and screen views count as page views in reports.
    pub fn is_view(self) -> bool {
        matches!(self, Self::Pageview | Self::ScreenView)
    }
}

/// A typed property value.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropValue {
    /// Text.
    #[prost(string, tag = "1")]
    Str(String),
    /// A finite number.
    #[prost(double, tag = "2")]
    Num(f64),
    /// A boolean.
    #[prost(bool, tag = "3")]
    Bool(bool),
}

impl PropValue {
    /// The value as report text.
    pub fn to_text(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            Self::Num(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// A property value wrapper (prost needs a message around a oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredProp {
    /// The value.
    #[prost(oneof = "PropValue", tags = "1, 2, 3")]
    pub value: Option<PropValue>,
}

/// Money as whole units plus nanos.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredMoney {
    /// ISO 4217 code.
    #[prost(string, tag = "1")]
    pub currency: String,
    /// Whole units.
    #[prost(int64, tag = "2")]
    pub units: i64,
    /// Nano units.
    #[prost(int32, tag = "3")]
    pub nanos: i32,
}

impl StoredMoney {
    /// The amount as a float, for sums in reports.
    pub fn as_f64(&self) -> f64 {
        self.units as f64 + f64::from(self.nanos) / 1e9
    }
}

/// An accepted, enriched event as stored. The site, timestamp and event id
/// live in the storage key; everything else is here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEvent {
    /// Event id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub event_id: Vec<u8>,
    /// Client timestamp, microseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub ts_micros: i64,
    /// Server receive time, microseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    pub received_micros: i64,
    /// `EventKind` number.
    #[prost(int32, tag = "4")]
    pub kind: i32,
    /// Event name ("pageview", the screen name, or the custom name).
    #[prost(string, tag = "5")]
    pub name: String,
    /// Host name of the page URL.
    #[prost(string, tag = "6")]
    pub hostname: String,
    /// Page path, or screen name for screen views.
    #[prost(string, tag = "7")]
    pub path: String,
    /// Query string of the page URL (without '?').
    #[prost(string, tag = "8")]
    pub query: String,
    /// True when the page URL was plain http.
    #[prost(bool, tag = "9")]
    pub insecure: bool,
    /// Referrer URL.
    #[prost(string, tag = "10")]
    pub referrer: String,
    /// Custom properties.
    #[prost(btree_map = "string, message", tag = "11")]
    pub properties: std::collections::BTreeMap<String, StoredProp>,
    /// Revenue.
    #[prost(message, optional, tag = "12")]
    pub revenue: Option<StoredMoney>,
    /// Visitor id.
    #[prost(fixed64, tag = "13")]
    pub visitor: u64,
    /// Client session id, when the SDK sent one.
    #[prost(string, tag = "14")]
    pub client_session: String,
    /// User id.
    #[prost(string, tag = "15")]
    pub user_id: String,
    /// Flagged as a bot.
    #[prost(bool, tag = "16")]
    pub bot: bool,
    /// Does not count as engagement.
    #[prost(bool, tag = "17")]
    pub non_interaction: bool,
    /// Browser family.
    #[prost(string, tag = "18")]
    pub browser: String,
    /// Browser version.
    #[prost(string, tag = "19")]
    pub browser_version: String,
    /// OS family.
    #[prost(string, tag = "20")]
    pub os: String,
    /// OS version.
    #[prost(string, tag = "21")]
    pub os_version: String,
    /// `tally.v1.DeviceType` number.
    #[prost(int32, tag = "22")]
    pub device_type: i32,
    /// Country code.
    #[prost(string, tag = "23")]
    pub country: String,
    /// Region code.
    #[prost(string, tag = "24")]
    pub region: String,
    /// City.
    #[prost(string, tag = "25")]
    pub city: String,
    /// Traffic source.
    #[prost(string, tag = "26")]
    pub source: String,
    /// Traffic medium.
    #[prost(string, tag = "27")]
    pub medium: String,
    /// utm_campaign.
    #[prost(string, tag = "28")]
    pub campaign: String,
    /// utm_term.
    #[prost(string, tag = "29")]
    pub utm_term: String,
    /// utm_content.
    #[prost(string, tag = "30")]
    pub utm_content: String,
    /// App version.
    #[prost(string, tag = "31")]
    pub app_version: String,
    /// Locale.
    #[prost(string, tag = "32")]
    pub locale: String,
    /// utm_source.
    #[prost(string, tag = "33")]
    pub utm_source: String,
    /// utm_medium.
    #[prost(string, tag = "34")]
    pub utm_medium: String,
    /// Visit id, assigned at ingest (0: stored before visits were formed at ingest).
    #[prost(fixed64, tag = "35")]
    pub session: u64,
    /// Start of the visit, microseconds since the Unix epoch.
    #[prost(int64, tag = "36")]
    pub session_start: i64,
}

impl StoredEvent {
    /// The event id, when the stored bytes are a UUID.
    pub fn id(&self) -> Option<EventId> {
        uuid::Uuid::from_slice(&self.event_id).ok().map(EventId)
    }

    /// The event kind, when known.
    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_i32(self.kind)
    }
}

/// How the cookieless visitor id is salted (numbered as `tally.v1.SaltPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaltPolicy {
    /// A new salt every UTC day.
    Daily = 1,
    /// One salt per site, forever.
    Fixed = 2,
    /// A new salt every week (UTC, weeks starting on Monday).
    Weekly = 3,
}

/// A site and its settings, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SiteRecord {
    /// Site id.
    #[prost(string, tag = "1")]
    pub site_id: String,
    /// Primary domain.
    #[prost(string, tag = "2")]
    pub domain: String,
    /// Display name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// IANA time zone.
    #[prost(string, tag = "4")]
    pub time_zone: String,
    /// Allowed browser origins.
    #[prost(string, repeated, tag = "5")]
    pub allowed_origins: Vec<String>,
    /// Retention of raw events, days.
    #[prost(int32, tag = "6")]
    pub retention_days: i32,
    /// `SaltPolicy` number.
    #[prost(int32, tag = "7")]
    pub salt_policy: i32,
    /// Visit inactivity timeout, minutes.
    #[prost(int32, tag = "8")]
    pub session_timeout_minutes: i32,
    /// More domains of the site.
    #[prost(string, repeated, tag = "9")]
    pub additional_domains: Vec<String>,
    /// Creation time, microseconds since the Unix epoch.
    #[prost(int64, tag = "10")]
    pub create_micros: i64,
    /// Browsers sending Do-Not-Track or Global Privacy Control are not tracked.
    #[prost(bool, tag = "11")]
    pub honor_do_not_track: bool,
    /// Client addresses or CIDR ranges whose events are not tracked.
    #[prost(string, repeated, tag = "12")]
    pub excluded_ip_ranges: Vec<String>,
}

/// What an API key may do (numbered as `tally.v1.KeyKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Sends events to one site.
    Ingest = 1,
    /// Reads its sites.
    Query = 2,
    /// Everything.
    Admin = 3,
}

impl KeyKind {
    /// Maps the wire number.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Ingest,
            2 => Self::Query,
            3 => Self::Admin,
            _ => return None,
        })
    }

    /// The short tag in a key's secret, e.g. `tly_ing_...`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Ingest => "ing",
            Self::Query => "qry",
            Self::Admin => "adm",
        }
    }
}

/// An API key as stored: only the hash of its secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyRecord {
    /// Key id.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// `KeyKind` number.
    #[prost(int32, tag = "2")]
    pub kind: i32,
    /// Sites it applies to.
    #[prost(string, repeated, tag = "3")]
    pub site_ids: Vec<String>,
    /// Label.
    #[prost(string, tag = "4")]
    pub name: String,
    /// First characters of the secret.
    #[prost(string, tag = "5")]
    pub prefix: String,
    /// BLAKE3 hash of the secret.
    #[prost(bytes = "vec", tag = "6")]
    pub secret_hash: Vec<u8>,
    /// Creation time, microseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    pub create_micros: i64,
    /// Revocation time; 0 while active.
    #[prost(int64, tag = "8")]
    pub revoke_micros: i64,
    /// Expiry time; 0: never.
    #[prost(int64, tag = "9")]
    pub expire_micros: i64,
    /// Last authenticated use, to the minute; 0: never.
    #[prost(int64, tag = "10")]
    pub last_used_micros: i64,
}

impl KeyRecord {
    /// The key's kind, when known.
    pub fn key_kind(&self) -> Option<KeyKind> {
        KeyKind::from_i32(self.kind)
    }
}

/// Current time in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}
