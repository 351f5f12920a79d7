//! Conversions between stored records and `tally.v1` messages.

use prost_types::Timestamp;
use tally_proto::v1;

use crate::domain::{PropValue, StoredEvent, VisitorId};

/// Microseconds since the Unix epoch as a protobuf timestamp.
pub fn micros_to_timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Microseconds since the Unix epoch as RFC 3339 UTC text, to the second.
pub fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| micros.to_string())
}

/// A protobuf timestamp as microseconds since the Unix epoch (saturating).
pub fn timestamp_to_micros(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1000)
}

/// The public form of a stored event.
pub fn recorded_event(e: &StoredEvent) -> v1::RecordedEvent {
    let url = match e.hostname.is_empty() {
        true => String::new(),
        false => {
            let scheme = if e.insecure { "http" } else { "https" };
            let query = if e.query.is_empty() {
                String::new()
            } else {
                format!("?{}", e.query)
            };
            format!("{scheme}://{}{}{query}", e.hostname, e.path)
        }
    };
    let properties = e
        .properties
        .iter()
        .filter_map(|(k, v)| {
            let value = match v.value.as_ref()? {
                PropValue::Str(s) => v1::property_value::Value::StringValue(s.clone()),
                PropValue::Num(n) => v1::property_value::Value::NumberValue(*n),
                PropValue::Bool(b) => v1::property_value::Value::BoolValue(*b),
            };
            Some((k.clone(), v1::PropertyValue { value: Some(value) }))
        })
        .collect();
    v1::RecordedEvent {
        event_id: e.id().map(|id| id.to_string()).unwrap_or_default(),
        timestamp: Some(micros_to_timestamp(e.ts_micros)),
        received_at: Some(micros_to_timestamp(e.received_micros)),
        r#type: e.kind,
        name: e.name.clone(),
        url,
        hostname: e.hostname.clone(),
        path: e.path.clone(),
        referrer: e.referrer.clone(),
        properties,
        revenue: e.revenue.as_ref().map(|m| v1::Money {
            currency_code: m.currency.clone(),
            units: m.units,
            nanos: m.nanos,
        }),
        visitor_id: VisitorId(e.visitor).to_string(),
        session_id: match e.session {
            0 => e.client_session.clone(),
            visit => crate::sessions::public_id(e.session_start, visit),
        },
        user_id: e.user_id.clone(),
        bot: e.bot,
        browser: e.browser.clone(),
        browser_version: e.browser_version.clone(),
        os: e.os.clone(),
        os_version: e.os_version.clone(),
        device_type: e.device_type,
        country: e.country.clone(),
        region: e.region.clone(),
        city: e.city.clone(),
        source: e.source.clone(),
        medium: e.medium.clone(),
        campaign: e.campaign.clone(),
        utm_source: e.utm_source.clone(),
        utm_medium: e.utm_medium.clone(),
        utm_term: e.utm_term.clone(),
        utm_content: e.utm_content.clone(),
        app_version: e.app_version.clone(),
        locale: e.locale.clone(),
        non_interaction: e.non_interaction,
    }
}
