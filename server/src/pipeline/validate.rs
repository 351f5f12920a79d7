//! Validation: checks a client event against the limits and copies it into
//! the stored form (id, time, type, URL parts, properties, revenue, context).

use std::net::IpAddr;

use serde::Deserialize;
use tally_proto::v1::{self, RejectReason as R};

use super::{Draft, Outcome, Rejection, RequestFacts, Stage};

/// The result of one check.
type Checked = Result<(), Rejection>;
use crate::domain::{EventKind, PropValue, StoredMoney, StoredProp};

/// Limits on one event.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestLimits {
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Most properties on one event.
    pub max_properties: usize,
    /// Longest URL or referrer, bytes.
    pub max_url_bytes: usize,
    /// Longest name, screen, id or context string, bytes.
    pub max_name_bytes: usize,
    /// Longest string property value, bytes.
    pub max_property_value_bytes: usize,
    /// How far in the past a timestamp may be, seconds.
    pub max_past_secs: i64,
    /// How far in the future a timestamp may be, seconds.
    pub max_future_secs: i64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_batch_events: 1000,
            max_properties: 50,
            max_url_bytes: 2000,
            max_name_bytes: 200,
            max_property_value_bytes: 1000,
            max_past_secs: 30 * 86_400,
            max_future_secs: 86_400,
        }
    }
}

/// Configuration of the validation stage.
#[derive(Clone, Debug, Default)]
pub struct ValidateConfig {
    /// The limits.
    pub limits: IngestLimits,
}

impl ValidateConfig {
    /// The runtime stage.
    pub fn build(&self) -> Validate {
        Validate {
            limits: self.limits.clone(),
        }
    }
}

/// The validation stage.
pub struct Validate {
    limits: IngestLimits,
}

const MAX_PROPERTY_KEY_BYTES: usize = 100;

impl Validate {
    fn check_len(&self, field: &str, value: &str, max: usize) -> Checked {
        if value.len() > max {
            return Err(Rejection::new(
                R::FieldTooLong,
                field,
                format!("{field} is {} bytes, the limit is {max}", value.len()),
            ));
        }
        Ok(())
    }

    fn required<'s>(&self, field: &str, value: &'s str) -> Result<&'s str, Rejection> {
        if value.trim().is_empty() {
            return Err(Rejection::new(
                R::MissingField,
                field,
                format!("{field} is required"),
            ));
        }
        self.check_len(field, value, self.limits.max_name_bytes)?;
        Ok(value)
    }

    fn timestamp(&self, draft: &mut Draft<'_>) -> Checked {
        let Some(ts) = draft.raw.timestamp else {
            return Err(Rejection::new(
                R::MissingField,
                "timestamp",
                "timestamp is required",
            ));
        };
        let micros = ts
            .seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(ts.nanos) / 1000);
        let now = draft.facts.now_micros;
        if micros < now - self.limits.max_past_secs * 1_000_000 {
            return Err(Rejection::new(
                R::TimestampTooOld,
                "timestamp",
                format!(
                    "timestamp is more than {} s in the past",
                    self.limits.max_past_secs
                ),
            ));
        }
        if micros > now + self.limits.max_future_secs * 1_000_000 {
            return Err(Rejection::new(
                R::TimestampInFuture,
                "timestamp",
                format!(
                    "timestamp is more than {} s in the future",
                    self.limits.max_future_secs
                ),
            ));
        }
        draft.stored.ts_micros = micros;
        Ok(())
    }

    fn url(&self, field: &str, raw: &str) -> Result<url::Url, Rejection> {
        self.check_len(field, raw, self.limits.max_url_bytes)?;
        let invalid = |why: String| Rejection::new(R::InvalidUrl, field, format!("{field} {why}"));
        let parsed = url::Url::parse(raw).map_err(|err| invalid(format!("is not an absolute URL: {err}")))?;
        Ok(parsed).and_then(|u| {
            if u.host_str().is_none() && matches!(u.scheme(), "http" | "https") {
                return Err(invalid("has no host".into()));
            }
            Ok(u)
        })
    }

    /// A referrer is only read for its host, so it gets a light check (about
    /// a tenth of a full parse): a scheme, and a host for http(s). Android
    /// apps refer as `android-app://<package>/`.
    fn referrer(&self, raw: &str) -> Checked {
        self.check_len("referrer", raw, self.limits.max_url_bytes)?;
        let invalid = |why: &str| Rejection::new(R::InvalidUrl, "referrer", format!("referrer {why}"));
        let Some((scheme, rest)) = raw.split_once(':') else {
            return Err(invalid("is not an absolute URL"));
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err(invalid("is not an absolute URL"));
        }
        if raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(invalid("contains spaces or control characters"));
        }
        if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
            let host = rest
                .strip_prefix("//")
                .and_then(|r| r.split(['/', '?', '#']).next());
            if host.is_none_or(|h| {
                h.rsplit('@')
                    .next()
                    .is_none_or(|h| h.is_empty() || h.starts_with(':'))
            }) {
                return Err(invalid("has no host"));
            }
        }
        Ok(())
    }

    fn page(&self, draft: &mut Draft<'_>, required: bool) -> Checked {
        let raw = draft.raw.url.trim();
        if raw.is_empty() {
            return match required {
                true => Err(Rejection::new(
                    R::MissingField,
                    "url",
                    "url is required for page views",
                )),
                false => Ok(()),
            };
        }
        self.check_len("url", raw, self.limits.max_url_bytes)?;
        let stored = &mut draft.stored;
        if let Some(plain) = PlainUrl::split(raw) {
            stored.insecure = plain.insecure;
            stored.hostname = plain.host.to_owned();
            stored.path = if plain.path.is_empty() { "/" } else { plain.path }.to_owned();
            stored.query = plain.query.to_owned();
            return Ok(());
        }
        let url = self.url("url", raw)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Rejection::new(R::InvalidUrl, "url", "url must be an http(s) URL"));
        }
        stored.insecure = url.scheme() == "http";
        stored.hostname = url.host_str().unwrap_or_default().to_owned();
        stored.path = url.path().to_owned();
        stored.query = url.query().unwrap_or_default().to_owned();
        Ok(())
    }

    fn properties(&self, draft: &mut Draft<'_>) -> Checked {
        let props = &draft.raw.properties;
        if props.len() > self.limits.max_properties {
            return Err(Rejection::new(
                R::TooManyProperties,
                "properties",
                format!(
                    "{} properties, the limit is {}",
                    props.len(),
                    self.limits.max_properties
                ),
            ));
        }
        for (key, value) in props {
            let field = format!("properties.{key}");
            let key_ok = !key.is_empty()
                && key.len() <= MAX_PROPERTY_KEY_BYTES
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !key_ok {
                return Err(Rejection::new(
                    R::InvalidProperty,
                    field,
                    format!(
                        "property key must be 1-{MAX_PROPERTY_KEY_BYTES} characters of A-Z, a-z, 0-9, '_', '.', '-'"
                    ),
                ));
            }
            let stored = match &value.value {
                None => {
                    return Err(Rejection::new(
                        R::InvalidProperty,
                        field,
                        "property value is empty",
                    ));
                }
                Some(v1::property_value::Value::StringValue(s)) => {
                    self.check_len(&field, s, self.limits.max_property_value_bytes)?;
                    PropValue::Str(s.clone())
                }
                Some(v1::property_value::Value::NumberValue(n)) if !n.is_finite() => {
                    return Err(Rejection::new(R::InvalidProperty, field, "number must be finite"));
                }
                Some(v1::property_value::Value::NumberValue(n)) => PropValue::Num(*n),
                Some(v1::property_value::Value::BoolValue(b)) => PropValue::Bool(*b),
            };
            draft
                .stored
                .properties
                .insert(key.clone(), StoredProp { value: Some(stored) });
        }
        Ok(())
    }

    fn revenue(&self, draft: &mut Draft<'_>) -> Checked {
        let Some(money) = &draft.raw.revenue else {
            return Ok(());
        };
        let code_ok =
            money.currency_code.len() == 3 && money.currency_code.bytes().all(|b| b.is_ascii_uppercase());
        if !code_ok {
            return Err(Rejection::new(
                R::InvalidRevenue,
                "revenue.currency_code",
                "currency_code must be a three-letter ISO 4217 code such as \"EUR\"",
            ));
        }
        let signs_agree = (money.units >= 0 && money.nanos >= 0) || (money.units <= 0 && money.nanos <= 0);
        // `unsigned_abs`: `i32::MIN.abs()` overflows (a panic in debug builds,
        // and a negative "absolute" value that passed the check in release).
        if money.nanos.unsigned_abs() > 999_999_999 || !signs_agree {
            return Err(Rejection::new(
                R::InvalidRevenue,
                "revenue.nanos",
                "nanos must be within +-999,999,999 and have the sign of units",
            ));
        }
        draft.stored.revenue = Some(StoredMoney {
            currency: money.currency_code.clone(),
            units: money.units,
            nanos: money.nanos,
        });
        Ok(())
    }

    fn context(&self, draft: &mut Draft<'_>) -> Checked {
        static NONE: std::sync::LazyLock<v1::Context> = std::sync::LazyLock::new(Default::default);
        let raw: &v1::Event = draft.raw;
        let ctx = raw.context.as_ref().unwrap_or(&NONE);
        let max = self.limits.max_name_bytes;
        for (field, value) in [
            ("context.app_version", &ctx.app_version),
            ("context.locale", &ctx.locale),
            ("context.os_name", &ctx.os_name),
            ("context.os_version", &ctx.os_version),
            ("context.sdk_name", &ctx.sdk_name),
            ("context.sdk_version", &ctx.sdk_version),
            ("context.device_model", &ctx.device_model),
        ] {
            self.check_len(field, value, max)?;
        }
        self.check_len("context.user_agent", &ctx.user_agent, self.limits.max_url_bytes)?;
        if !ctx.ip.is_empty() {
            let ip: IpAddr = ctx.ip.parse().map_err(|_| {
                Rejection::new(
                    R::InvalidValue,
                    "context.ip",
                    format!("{:?} is not an IP address", ctx.ip),
                )
            })?;
            draft.ip = Some(ip);
        } else {
            draft.ip = draft.facts.peer_ip;
        }
        // A browser's `user-agent` header describes the visitor; a native or
        // backend client's names its gRPC library, so it is not used.
        let facts: &RequestFacts = draft.facts;
        (draft.user_agent, draft.web) = match (ctx.user_agent.is_empty(), facts.from_browser) {
            (false, _) => (ctx.user_agent.as_str(), true),
            (true, true) => (facts.user_agent.as_str(), true),
            (true, false) => ("", false),
        };
        let stored = &mut draft.stored;
        stored.app_version.clone_from(&ctx.app_version);
        stored.locale.clone_from(&ctx.locale);
        stored.os.clone_from(&ctx.os_name);
        stored.os_version.clone_from(&ctx.os_version);
        stored.device_type = ctx.device_type;
        Ok(())
    }
}

/// The parts of a page URL already in the form a URL parser would give
/// them, split without one: most page URLs are such, and parsing costs more
/// than the rest of validation.
///
/// Only lower-case `http://` or `https://`, then a host of lower-case
/// letters, digits, '-' and '.' (no port, user, IP address or punycode),
/// then a path and query of characters a parser keeps as they are (no dot
/// segments), then any fragment; all printable ASCII. Anything else goes to
/// the parser. A test checks that both agree on every URL this accepts.
#[derive(Debug, PartialEq)]
struct PlainUrl<'a> {
    insecure: bool,
    host: &'a str,
    /// Empty for no path ("/").
    path: &'a str,
    query: &'a str,
}

/// A table of the bytes in `extra` and the ASCII letters and digits.
const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Path bytes a parser keeps as they are.
const PLAIN_PATH: [bool; 256] = byte_class(b"-._~!$&'()*+,;=:@/");
/// Query bytes a parser keeps as they are.
const PLAIN_QUERY: [bool; 256] = byte_class(b"-._~!$&()*+,;=:@/?%");

impl<'a> PlainUrl<'a> {
    fn split(raw: &'a str) -> Option<Self> {
        let (insecure, rest) = match raw.strip_prefix("https://") {
            Some(rest) => (false, rest),
            None => (true, raw.strip_prefix("http://")?),
        };
        let bytes = rest.as_bytes();
        // Host: lower-case labels of letters, digits and '-', no empty one
        // but a last (a trailing dot).
        let mut at = 0;
        let mut label_start = 0;
        let mut last_label_digit = false;
        while let Some(&b) = bytes.get(at) {
            // Punycode labels are checked by parsers.
            if at == label_start && bytes[at..].starts_with(b"xn--") {
                return None;
            }
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' => {}
                b'.' if at > label_start => {
                    last_label_digit = bytes[label_start].is_ascii_digit();
                    label_start = at + 1;
                }
                b'/' | b'?' | b'#' => break,
                _ => return None,
            }
            at += 1;
        }
        if at == 0 {
            return None;
        }
        if at > label_start {
            last_label_digit = bytes[label_start].is_ascii_digit();
        }
        let host = &rest[..at];
        // A last label starting with a digit may be an IPv4 address, which
        // parsers rewrite.
        if last_label_digit {
            return None;
        }
        let (before_fragment, fragment) = rest[at..].split_once('#').unwrap_or((&rest[at..], ""));
        let (path, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
        let path_ok = path.bytes().all(|b| PLAIN_PATH[usize::from(b)])
            && !path.as_bytes().windows(2).any(|w| w == b"/.");
        let query_ok = query.bytes().all(|b| PLAIN_QUERY[usize::from(b)]);
        let fragment_ok = fragment.bytes().all(|b| b.is_ascii_graphic());
        (path_ok && query_ok && fragment_ok).then_some(Self {
            insecure,
            host,
            path,
            query,
        })
    }
}

impl Stage for Validate {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        Ok(self.check(draft)?)
    }
}

impl Validate {
    fn check(&self, draft: &mut Draft<'_>) -> Checked {
        let raw = draft.raw;
        let id = self.required("event_id", &raw.event_id)?;
        let id = uuid::Uuid::parse_str(id.trim())
            .ok()
            .filter(|u| !u.is_nil())
            .ok_or_else(|| {
                Rejection::new(
                    R::InvalidEventId,
                    "event_id",
                    format!("event_id {id:?} is not a UUID"),
                )
            })?;
        draft.stored.event_id = id.as_bytes().to_vec();
        self.timestamp(draft)?;

        let Some(kind) = EventKind::from_i32(raw.r#type) else {
            return Err(Rejection::new(
                R::InvalidType,
                "type",
                "type must be set to a known EventType",
            ));
        };
        draft.stored.kind = kind as i32;
        self.check_len("name", &raw.name, self.limits.max_name_bytes)?;
        match kind {
            EventKind::Pageview => {
                self.page(draft, true)?;
                draft.stored.name = "pageview".into();
            }
            EventKind::ScreenView => {
                let screen = self.required("screen", &raw.screen)?;
                draft.stored.name = screen.to_owned();
                draft.stored.path = screen.to_owned();
            }
            EventKind::Custom => {
                draft.stored.name = self.required("name", &raw.name)?.to_owned();
                self.page(draft, false)?;
            }
            EventKind::Identify => {
                self.required("user_id", &raw.user_id)?;
                draft.stored.name = "identify".into();
            }
            EventKind::Engagement => {
                draft.stored.name = if raw.name.is_empty() {
                    "engagement".into()
                } else {
                    raw.name.clone()
                };
                self.page(draft, false)?;
            }
        }
        if !raw.referrer.is_empty() {
            self.referrer(&raw.referrer)?;
            draft.stored.referrer = raw.referrer.clone();
        }
        for (field, value) in [("user_id", &raw.user_id), ("anonymous_id", &raw.anonymous_id)] {
            self.check_len(field, value, self.limits.max_name_bytes)?;
        }
        draft.stored.user_id = raw.user_id.clone();
        if let Some(session) = &raw.session {
            self.check_len(
                "session.session_id",
                &session.session_id,
                self.limits.max_name_bytes,
            )?;
            draft.stored.client_session = session.session_id.clone();
        }
        draft.stored.non_interaction = raw.non_interaction;
        self.properties(draft)?;
        self.revenue(draft)?;
        self.context(draft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revenue_nanos_are_checked_at_the_limits() {
        let validate = ValidateConfig::default().build();
        let facts = RequestFacts {
            site: Default::default(),
            now_micros: 0,
            user_agent: String::new(),
            peer_ip: None,
            from_browser: false,
            do_not_track: false,
            excluded_ips: Vec::new(),
            salt: [0; 32],
        };
        for (units, nanos, ok) in [
            (-1, -999_999_999, true),
            (0, 999_999_999, true),
            (0, -1_000_000_000, false),
            (0, i32::MIN, false),
            (-5, i32::MIN, false),
            (5, i32::MAX, false),
        ] {
            let raw = v1::Event {
                revenue: Some(v1::Money {
                    currency_code: "EUR".into(),
                    units,
                    nanos,
                }),
                ..Default::default()
            };
            let mut draft = Draft {
                raw: &raw,
                facts: &facts,
                stored: Default::default(),
                user_agent: "",
                web: false,
                ip: None,
            };
            let checked = validate.revenue(&mut draft);
            assert_eq!(checked.is_ok(), ok, "{units} units, {nanos} nanos: {checked:?}");
        }
    }

    #[test]
    fn plain_urls_split_as_the_parser_parses_them() {
        let plain = |raw| PlainUrl::split(raw);
        assert_eq!(
            plain("https://shop.example/p/1?utm_source=x%20y#top"),
            Some(PlainUrl {
                insecure: false,
                host: "shop.example",
                path: "/p/1",
                query: "utm_source=x%20y",
            })
        );
        for other in [
            "HTTPS://shop.example/",
            "https://Shop.example/",
            "https://shop.example:8080/",
            "https://user@shop.example/",
            "https://10.0.0.1/",
            "https://xn--bcher-kva.example/",
            "https://shop.example/a/../b",
            "https://shop.example/a b",
            "https://shop.example/caf\u{e9}",
            "ftp://shop.example/",
        ] {
            assert_eq!(plain(other), None, "{other}");
        }
        // Random URLs from pieces that parsers treat specially: wherever the
        // split accepts one, it must give what the parser gives.
        // Per part: pieces that keep a URL plain, then pieces that may not.
        let pieces: [(&[&str], &[&str]); 4] = [
            (
                &["https://", "http://"],
                &["HTTP://", "https:/", "ftp://", "https:"],
            ),
            (
                &["a", "b-c", "com", ".", "x9", "-"],
                &["0", "9x", "..", "xn--", "A", ":80", "@", "%41", "_", "\u{e9}"],
            ),
            (
                &["/", "a", "b.c", "~", "'", ":", "@", ";", "=", "(", "*", "-"],
                &[
                    ".", "..", "%2e", "%", "\"", "<", "^", "|", "{", "\\", " ", "\t", "\u{e9}",
                ],
            ),
            (
                &["?", "&", "=", "%", "/", "a", "%20", "+", "#", "'"],
                &["\"", " ", "<", "\\", "`", "{", "\u{e9}", "\n"],
            ),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut url = String::new();
            for (i, (plain, other)) in pieces.iter().enumerate() {
                for _ in 0..if i == 0 { 1 } else { next(6) } {
                    let piece = match next(16) {
                        0 => other[next(other.len())],
                        _ => plain[next(plain.len())],
                    };
                    url.push_str(piece);
                }
            }
            let Some(split) = PlainUrl::split(&url) else {
                continue;
            };
            accepted += 1;
            let parsed = url::Url::parse(&url).unwrap_or_else(|err| panic!("{url}: {err}"));
            assert_eq!(
                (
                    parsed.scheme() == "http",
                    parsed.host_str().unwrap_or_default(),
                    parsed.path(),
                    parsed.query().unwrap_or_default()
                ),
                (
                    split.insecure,
                    split.host,
                    if split.path.is_empty() { "/" } else { split.path },
                    split.query
                ),
                "{url}"
            );
        }
        assert!(accepted > 10_000, "only {accepted} random URLs were plain");
    }

    #[test]
    fn referrers_need_a_scheme_and_an_http_host() {
        let validate = ValidateConfig::default().build();
        for ok in [
            "https://news.example/item?id=7",
            "http://user@host.example:8080/",
            "android-app://com.google.android.gm/",
            "https://www.google.com",
        ] {
            assert!(validate.referrer(ok).is_ok(), "{ok}");
        }
        for bad in [
            "news.example/item",
            "https:///path",
            "https://",
            "1http://x",
            "https://a b.example/",
            "",
        ] {
            let err = validate.referrer(bad).unwrap_err();
            assert_eq!(
                (err.reason, err.field.as_str()),
                (R::InvalidUrl, "referrer"),
                "{bad}"
            );
        }
    }
}
