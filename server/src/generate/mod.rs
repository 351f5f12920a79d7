//! `tally generate`: a realistic synthetic data set, drawn deterministically
//! from a seed, sent to a running server (or written as JSON lines).
//!
//! The same `--seed`, `--events`, `--days`, `--end` and domain give the same
//! events byte for byte, event ids included (UUIDv7 from the timestamp and
//! seeded random bits), so one data set can be loaded into Tally and, through
//! `AdminService/ExportEvents`, into another engine to check its answers. See
//! [`model`] for what the data set holds.

pub mod mmdb;
pub mod model;
mod rng;
mod send;
mod tables;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use tally_proto::v1;
use tonic::transport::Endpoint;

pub use send::Tally;

/// Arguments of `tally generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Seed: the same seed (with the same --events, --days, --end and domain)
    /// gives the same events, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Days the events spread over, ending at --end (1-29: ingest refuses
    /// events more than 30 days old).
    #[arg(long, default_value_t = 28, value_parser = clap::value_parser!(u32).range(1..=29))]
    pub days: u32,
    /// End of the period, RFC 3339, e.g. 2026-05-01T12:00:00Z [default: now].
    #[arg(long)]
    pub end: Option<String>,
    /// Server to send the events to.
    #[arg(long, default_value = "http://127.0.0.1:7750")]
    pub target: String,
    /// Key: the site's ingest key, or an admin or operator key (needed for
    /// --create-site).
    #[arg(long, env = "TALLY_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Site to send to.
    #[arg(long)]
    pub site: Option<String>,
    /// The site's domain; pages live on its www., blog. and docs. hosts
    /// [default: the site id when it has a dot, else SITE.example].
    #[arg(long)]
    pub domain: Option<String>,
    /// Create the site first with AdminService/CreateSite (an existing site
    /// is left as it is).
    #[arg(long)]
    pub create_site: bool,
    /// Time zone of a site made by --create-site.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// Write the events as JSON lines (tally.v1.Event in proto JSON) to this
    /// file, or '-' for stdout, instead of sending them.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write a geo-IP database (.mmdb) that places the generated
    /// addresses (18 cities, 3 data centres), for `tally serve --geoip-db`.
    #[arg(long)]
    pub write_geoip_db: Option<PathBuf>,
    /// Events per TrackRequest (1-1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Exit with 0 even when the server rejects events.
    #[arg(long)]
    pub allow_rejected: bool,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn default_domain(site: &str) -> String {
    if site.contains('.') {
        site.to_owned()
    } else {
        format!("{site}.example")
    }
}

/// Runs `tally generate`.
pub async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let end_ms = match &args.end {
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .with_context(|| format!("--end {raw:?} is not an RFC 3339 time"))?
            .timestamp_millis(),
        None => Utc::now().timestamp_millis(),
    };
    if let Some(path) = &args.write_geoip_db {
        std::fs::write(path, geoip_database()).with_context(|| format!("write {}", path.display()))?;
        eprintln!("generate: wrote the geo-IP database {}", path.display());
    }
    if args.events == 0 && args.output.is_none() && !args.create_site {
        return Ok(());
    }
    let sending = args.output.is_none();
    let site = args.site.clone().unwrap_or_default();
    if sending && args.events > 0 && site.is_empty() {
        bail!("--site is required to send events (or write them with --output)");
    }
    let domain = args.domain.clone().unwrap_or_else(|| default_domain(&site));
    let settings = model::Settings {
        seed: args.seed,
        events: args.events,
        days: args.days,
        end_ms,
        domain: domain.clone(),
    };
    let started = Instant::now();
    let plan = model::plan(&settings);
    eprintln!(
        "generate: {} events of {} visitors, {} to {}, seed {}, domain {domain} ({:.1} s)",
        plan.events.len(),
        plan.visitors(),
        rfc3339(plan.start_ms),
        rfc3339(plan.end_ms),
        args.seed,
        started.elapsed().as_secs_f64()
    );

    if let Some(path) = &args.output {
        write_json_lines(&plan, path)?;
        return Ok(());
    }
    if plan.events.is_empty() && !args.create_site {
        return Ok(());
    }
    let Some(key) = args.key.as_deref() else {
        bail!("--key (or TALLY_KEY) is required to send events");
    };
    let channel = Endpoint::from_shared(args.target.clone())
        .with_context(|| format!("--target {:?} is not a URL", args.target))?
        .connect()
        .await
        .with_context(|| format!("connect to {}", args.target))?;
    if args.create_site {
        create_site(channel.clone(), key, &site, &domain, &args.time_zone).await?;
    }
    let started = Instant::now();
    let tally = send::send(channel, key, &site, &plan, usize::from(args.batch_size)).await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "generate: {} events in {seconds:.1} s ({:.0}/s): {} accepted, {} duplicates, {} rejected, {} excluded",
        tally.sent,
        tally.sent as f64 / seconds.max(1e-3),
        tally.accepted,
        tally.duplicates,
        tally.rejected,
        tally.excluded
    );
    for rejection in &tally.rejections {
        eprintln!("generate: rejected {rejection}");
    }
    let summary = serde_json::json!({
        "site": site,
        "seed": args.seed,
        "start": rfc3339(plan.start_ms),
        "end": rfc3339(plan.end_ms),
        "sent": tally.sent,
        "accepted": tally.accepted,
        "duplicates": tally.duplicates,
        "rejected": tally.rejected,
        "excluded": tally.excluded,
        "seconds": (seconds * 1000.0).round() / 1000.0,
    });
    println!("{summary}");
    if tally.rejected > 0 && !args.allow_rejected {
        bail!("the server rejected {} events", tally.rejected);
    }
    Ok(())
}

async fn create_site(
    channel: tonic::transport::Channel,
    key: &str,
    site: &str,
    domain: &str,
    time_zone: &str,
) -> anyhow::Result<()> {
    let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
    let request = v1::CreateSiteRequest {
        site: Some(v1::Site {
            site_id: site.to_owned(),
            domain: domain.to_owned(),
            time_zone: time_zone.to_owned(),
            ..Default::default()
        }),
    };
    match admin.create_site(send::authed(key, request)?).await {
        Ok(_) => eprintln!("generate: created site {site} ({domain}, {time_zone})"),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            eprintln!("generate: site {site} exists; left as it is");
        }
        Err(status) => return Err(status).with_context(|| format!("create site {site}")),
    }
    Ok(())
}

fn write_json_lines(plan: &model::Plan, path: &PathBuf) -> anyhow::Result<()> {
    let file: Box<dyn Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?)
    };
    let mut out = std::io::BufWriter::new(file);
    for planned in &plan.events {
        serde_json::to_writer(&mut out, &event_json(&plan.event(planned)))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// An event in proto JSON (field names as in the .proto file, enums by name),
/// which grpcurl reads too. Empty fields are left out.
pub fn event_json(e: &v1::Event) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut out = Map::new();
    let mut text = |key: &str, value: &str| {
        if !value.is_empty() {
            out.insert(key.into(), Value::from(value));
        }
    };
    text("event_id", &e.event_id);
    if let Some(ts) = &e.timestamp {
        let ms = ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000;
        text("timestamp", &rfc3339(ms));
    }
    text("type", e.r#type().as_str_name());
    text("name", &e.name);
    text("url", &e.url);
    text("screen", &e.screen);
    text("referrer", &e.referrer);
    text("user_id", &e.user_id);
    text("anonymous_id", &e.anonymous_id);
    if !e.properties.is_empty() {
        let props: Map<String, Value> = e
            .properties
            .iter()
            .map(|(k, v)| {
                let value = match &v.value {
                    Some(v1::property_value::Value::StringValue(s)) => json!({ "string_value": s }),
                    Some(v1::property_value::Value::NumberValue(n)) => json!({ "number_value": n }),
                    Some(v1::property_value::Value::BoolValue(b)) => json!({ "bool_value": b }),
                    None => json!({}),
                };
                (k.clone(), value)
            })
            .collect();
        out.insert("properties".into(), Value::Object(props));
    }
    if let Some(m) = &e.revenue {
        out.insert(
            "revenue".into(),
            json!({ "currency_code": m.currency_code, "units": m.units.to_string(), "nanos": m.nanos }),
        );
    }
    if let Some(s) = &e.session {
        out.insert(
            "session".into(),
            json!({ "session_id": s.session_id, "session_start": s.session_start }),
        );
    }
    if e.non_interaction {
        out.insert("non_interaction".into(), Value::Bool(true));
    }
    if let Some(c) = &e.context {
        let mut ctx = Map::new();
        for (key, value) in [
            ("sdk_name", &c.sdk_name),
            ("sdk_version", &c.sdk_version),
            ("app_version", &c.app_version),
            ("locale", &c.locale),
            ("os_name", &c.os_name),
            ("os_version", &c.os_version),
            ("device_model", &c.device_model),
            ("device_manufacturer", &c.device_manufacturer),
            ("user_agent", &c.user_agent),
            ("ip", &c.ip),
        ] {
            if !value.is_empty() {
                ctx.insert(key.into(), Value::from(value.as_str()));
            }
        }
        if c.device_type != 0 {
            ctx.insert("device_type".into(), Value::from(c.device_type().as_str_name()));
        }
        out.insert("context".into(), Value::Object(ctx));
    }
    Value::Object(out)
}

/// A geo-IP database (MaxMind City schema) with the generator's address
/// blocks: each place's IPv4 /16 and IPv6 /32. The TEST-NET block of the
/// "unknown" place is left out, so its visitors have no country.
pub fn geoip_database() -> Vec<u8> {
    use mmdb::Value::{Array, Map, Str};
    let mut networks: Vec<(IpAddr, u8, mmdb::Value)> = Vec::new();
    for place in tables::PLACES.iter().chain(tables::BOT_PLACES) {
        if place.country.is_empty() {
            continue;
        }
        let record = Map(vec![
            ("country", Map(vec![("iso_code", Str(place.country))])),
            (
                "subdivisions",
                Array(vec![Map(vec![("names", Map(vec![("en", Str(place.region))]))])]),
            ),
            ("city", Map(vec![("names", Map(vec![("en", Str(place.city))]))])),
        ]);
        let [a, b] = place.v4;
        networks.push((IpAddr::from([a, b, 0, 0]), 16, record.clone()));
        let v6 = std::net::Ipv6Addr::new(0x2a05, place.v6, 0, 0, 0, 0, 0, 0);
        networks.push((IpAddr::V6(v6), 32, record));
    }
    mmdb::build("GeoLite2-City", networks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_name_fields_as_the_proto_does() {
        let plan = model::plan(&model::Settings {
            seed: 9,
            events: 200,
            days: 3,
            end_ms: 1_780_000_000_000,
            domain: "shop.example".into(),
        });
        let lines: Vec<serde_json::Value> = plan.events.iter().map(|p| event_json(&plan.event(p))).collect();
        assert!(
            lines
                .iter()
                .all(|l| l["event_id"].is_string() && l["timestamp"].is_string())
        );
        let view = lines.iter().find(|l| l["type"] == "EVENT_TYPE_PAGEVIEW").unwrap();
        assert!(view["url"].as_str().unwrap().starts_with("https://"));
        assert!(view["context"]["user_agent"].is_string());
    }

    #[test]
    fn the_geo_database_places_generated_addresses() {
        let reader = maxminddb::Reader::from_source(geoip_database()).unwrap();
        #[derive(serde::Deserialize)]
        struct Country {
            iso_code: String,
        }
        #[derive(serde::Deserialize)]
        struct Record {
            country: Country,
        }
        let at = |ip: &str| {
            reader
                .lookup(ip.parse::<IpAddr>().unwrap())
                .unwrap()
                .decode::<Record>()
                .unwrap()
                .map(|r| r.country.iso_code)
        };
        assert_eq!(at("87.123.4.5").as_deref(), Some("DE"));
        assert_eq!(at("2a05:1006::1").as_deref(), Some("GB"));
        assert_eq!(at("203.0.113.9"), None);
    }
}
