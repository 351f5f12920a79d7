//! What the fuzz targets share: a fixed clock, the pipeline and request facts
//! they run events through, and the seed inputs, made with the real encoders.
//!
//! A target writes its seeds and exits when `TALLY_FUZZ_WRITE_SEEDS` names a
//! directory (see [`write_seeds_if_asked`]); `tests/fuzz.sh` explains the rest.

use std::path::Path;
use std::sync::LazyLock;

use prost::Message;
use tally_proto::v1;
use tally_sdk::queue::{DiskQueue, QueueConfig};
use tally_server::domain::{SiteRecord, StoredEvent};
use tally_server::pipeline::{Pipeline, PipelineConfig, RequestFacts};

/// The server clock of every target, 2026-03-10T12:00:00Z: fixed, so that an
/// input means the same thing on every run (timestamps must be near it).
pub const NOW_MICROS: i64 = 1_773_144_000 * 1_000_000;

/// The site the targets ingest into and report on.
pub fn site() -> SiteRecord {
    SiteRecord {
        site_id: "fuzz.example".into(),
        domain: "fuzz.example".into(),
        time_zone: "Europe/Berlin".into(),
        session_timeout_minutes: 30,
        excluded_ip_ranges: vec!["192.0.2.0/24".into()],
        ..Default::default()
    }
}

/// The ingest pipeline with its default configuration, built once.
pub fn pipeline() -> &'static Pipeline {
    static PIPELINE: LazyLock<Pipeline> =
        LazyLock::new(|| Pipeline::build(&PipelineConfig::default(), [1; 32]).expect("pipeline"));
    &PIPELINE
}

/// Request facts of a native app (no user agent header) and of a browser
/// (user agent header, Do-Not-Track sent, an excluded address range).
pub fn facts() -> &'static [RequestFacts; 2] {
    static FACTS: LazyLock<[RequestFacts; 2]> = LazyLock::new(|| {
        let native = RequestFacts {
            site: site(),
            now_micros: NOW_MICROS,
            user_agent: "grpc-rust/0.14".into(),
            peer_ip: Some("10.0.0.1".parse().expect("ip")),
            from_browser: false,
            do_not_track: false,
            excluded_ips: Vec::new(),
            salt: [7; 32],
        };
        let browser = RequestFacts {
            user_agent: CHROME.into(),
            peer_ip: Some("81.2.69.160".parse().expect("ip")),
            from_browser: true,
            do_not_track: true,
            excluded_ips: vec!["192.0.2.0/24".parse().expect("range")],
            ..native.clone()
        };
        [native, browser]
    });
    &FACTS
}

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// Events as the SDKs send them, one of each type, valid at [`NOW_MICROS`].
pub fn sample_events() -> Vec<v1::Event> {
    let at = |seconds_ago: i64| {
        Some(tally_server::convert::micros_to_timestamp(
            NOW_MICROS - seconds_ago * 1_000_000,
        ))
    };
    let id = |n: u8| format!("0192d0a4-8b2e-7cc1-9f3a-2f1e5b6c7d{n:02x}");
    let prop = |value| v1::PropertyValue { value: Some(value) };
    use v1::property_value::Value;
    vec![
        v1::Event {
            event_id: id(1),
            timestamp: at(5),
            r#type: v1::EventType::Pageview as i32,
            url: "https://fuzz.example/pricing?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
                .into(),
            referrer: "https://www.google.com/".into(),
            context: Some(v1::Context {
                user_agent: IPHONE.into(),
                ip: "81.2.69.160".into(),
                locale: "de-DE".into(),
                ..Default::default()
            }),
            session: Some(v1::SessionHint {
                session_id: "s-1".into(),
                session_start: true,
            }),
            ..Default::default()
        },
        v1::Event {
            event_id: id(2),
            timestamp: at(60),
            r#type: v1::EventType::Custom as i32,
            name: "purchase".into(),
            url: "http://fuzz.example/checkout?gclid=abc".into(),
            user_id: "user-42".into(),
            properties: [
                ("plan".to_owned(), prop(Value::StringValue("pro".into()))),
                ("seats".to_owned(), prop(Value::NumberValue(3.0))),
                ("trial".to_owned(), prop(Value::BoolValue(false))),
            ]
            .into(),
            revenue: Some(v1::Money {
                currency_code: "EUR".into(),
                units: 12,
                nanos: 340_000_000,
            }),
            ..Default::default()
        },
        v1::Event {
            event_id: id(3),
            timestamp: at(3600),
            r#type: v1::EventType::ScreenView as i32,
            screen: "Checkout".into(),
            anonymous_id: "device-7".into(),
            referrer: "android-app://com.google.android.gm/".into(),
            context: Some(v1::Context {
                sdk_name: "tally-kotlin".into(),
                sdk_version: "0.1.0".into(),
                app_version: "2.3.1".into(),
                os_name: "Android".into(),
                os_version: "14".into(),
                device_model: "Pixel 8".into(),
                device_type: v1::DeviceType::Mobile as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
        v1::Event {
            event_id: id(4),
            timestamp: at(86_400),
            r#type: v1::EventType::Identify as i32,
            user_id: "user-42".into(),
            anonymous_id: "device-7".into(),
            ..Default::default()
        },
        v1::Event {
            event_id: id(5),
            timestamp: at(-30),
            r#type: v1::EventType::Engagement as i32,
            url: "https://fuzz.example/blog/post-1#comments".into(),
            non_interaction: true,
            context: Some(v1::Context {
                user_agent: GOOGLEBOT.into(),
                ip: "2001:db8::1".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        v1::Event {
            event_id: id(7),
            timestamp: at(120),
            r#type: v1::EventType::Custom as i32,
            name: "refund".into(),
            revenue: Some(v1::Money {
                currency_code: "USD".into(),
                units: -1,
                nanos: -500_000_000,
            }),
            ..Default::default()
        },
        v1::Event {
            event_id: id(6),
            timestamp: at(10),
            r#type: v1::EventType::Pageview as i32,
            url: "https://fuzz.example/".into(),
            context: Some(v1::Context {
                ip: "192.0.2.10".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// Stored events made by the pipeline from [`sample_events`], for filters to test.
pub fn sample_stored_events() -> &'static [StoredEvent] {
    static STORED: LazyLock<Vec<StoredEvent>> = LazyLock::new(|| {
        let [native, _] = facts();
        let stored: Vec<StoredEvent> = sample_events()
            .iter()
            .filter_map(|event| pipeline().run(event, native).ok())
            .collect();
        assert_eq!(
            stored.len(),
            sample_events().len(),
            "every sample event is accepted"
        );
        stored
    });
    &STORED
}

/// Seeds of `track_request`: encoded `TrackRequest`s.
pub fn track_request_seeds() -> Vec<(String, Vec<u8>)> {
    let events = sample_events();
    let mut seeds: Vec<(String, Vec<u8>)> = events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let request = v1::TrackRequest {
                site_id: String::new(),
                events: vec![event.clone()],
            };
            (format!("event-{i}"), request.encode_to_vec())
        })
        .collect();
    let batch = v1::TrackRequest {
        site_id: "fuzz.example".into(),
        events,
    };
    seeds.push(("batch".into(), batch.encode_to_vec()));
    let invalid = v1::TrackRequest {
        site_id: String::new(),
        events: vec![v1::Event {
            event_id: "not-a-uuid".into(),
            r#type: v1::EventType::Pageview as i32,
            url: "https://fuzz.example/".into(),
            ..Default::default()
        }],
    };
    seeds.push(("invalid".into(), invalid.encode_to_vec()));
    seeds
}

/// Seeds of `report_request`: encoded `RunReportRequest`s, as in the README.
pub fn report_request_seeds() -> Vec<(String, Vec<u8>)> {
    use v1::filter::Condition;
    use v1::filter_expression::Expr;
    let standard = |d: v1::Dimension| v1::DimensionSpec {
        kind: Some(v1::dimension_spec::Kind::Standard(d as i32)),
    };
    let range = |start: &str, end: &str| v1::DateRange {
        start_date: start.into(),
        end_date: end.into(),
        name: String::new(),
    };
    let test = |d: v1::Dimension, condition: Condition| v1::FilterExpression {
        expr: Some(Expr::Filter(v1::Filter {
            dimension: Some(standard(d)),
            condition: Some(condition),
        })),
    };
    let matching = |match_type: v1::MatchType, value: &str| v1::StringMatch {
        match_type: match_type as i32,
        value: value.into(),
        case_sensitive: false,
    };
    let base = v1::RunReportRequest {
        site_id: "fuzz.example".into(),
        metrics: vec![v1::Metric::Pageviews as i32, v1::Metric::Visitors as i32],
        dimensions: vec![standard(v1::Dimension::Page)],
        date_ranges: vec![range("today", "today")],
        ..Default::default()
    };
    let requests = [
        ("pages-today", base.clone()),
        (
            "sources-filtered",
            v1::RunReportRequest {
                metrics: vec![
                    v1::Metric::Visits as i32,
                    v1::Metric::BounceRate as i32,
                    v1::Metric::VisitDuration as i32,
                ],
                dimensions: vec![standard(v1::Dimension::Source), standard(v1::Dimension::TimeDay)],
                date_ranges: vec![range("29daysAgo", "yesterday")],
                filter: Some(v1::FilterExpression {
                    expr: Some(Expr::AndGroup(v1::FilterExpressionList {
                        expressions: vec![
                            test(
                                v1::Dimension::Page,
                                Condition::StringMatch(matching(v1::MatchType::Prefix, "/blog")),
                            ),
                            v1::FilterExpression {
                                expr: Some(Expr::NotExpression(Box::new(test(
                                    v1::Dimension::Country,
                                    Condition::InList(v1::InListMatch {
                                        values: vec!["DE".into(), "FR".into()],
                                        case_sensitive: true,
                                    }),
                                )))),
                            },
                        ],
                    })),
                }),
                order_bys: vec![v1::OrderBy {
                    key: Some(v1::order_by::Key::Metric(v1::Metric::Visits as i32)),
                    desc: true,
                }],
                limit: 10,
                offset: 5,
                ..base.clone()
            },
        ),
        (
            "compare-previous-period",
            v1::RunReportRequest {
                dimensions: vec![
                    standard(v1::Dimension::Browser),
                    standard(v1::Dimension::TimeWeek),
                ],
                date_ranges: vec![range("2026-02-01", "2026-02-28")],
                comparison: v1::ComparisonMode::PreviousPeriod as i32,
                time_zone: "America/Santiago".into(),
                ..base.clone()
            },
        ),
        (
            "compare-custom",
            v1::RunReportRequest {
                date_ranges: vec![range("2024-02-29", "2024-03-01")],
                comparison: v1::ComparisonMode::Custom as i32,
                comparison_range: Some(range("2023-02-28", "2023-03-01")),
                ..base.clone()
            },
        ),
        (
            "two-ranges-previous-year",
            v1::RunReportRequest {
                dimensions: vec![standard(v1::Dimension::TimeMonth)],
                date_ranges: vec![
                    v1::DateRange {
                        name: "this week".into(),
                        ..range("6daysAgo", "today")
                    },
                    v1::DateRange {
                        name: "last week".into(),
                        ..range("13daysAgo", "7daysAgo")
                    },
                ],
                comparison: v1::ComparisonMode::PreviousYear as i32,
                ..base.clone()
            },
        ),
        (
            "conversion-revenue",
            v1::RunReportRequest {
                metrics: vec![
                    v1::Metric::ConversionRate as i32,
                    v1::Metric::Revenue as i32,
                    v1::Metric::Events as i32,
                ],
                dimensions: vec![v1::DimensionSpec {
                    kind: Some(v1::dimension_spec::Kind::Property("plan".into())),
                }],
                conversion_goal: Some(v1::Goal {
                    kind: Some(v1::goal::Kind::Page(matching(
                        v1::MatchType::Regex,
                        "^/checkout/(done|ok)$",
                    ))),
                }),
                revenue_currency: "eur".into(),
                filter: Some(v1::FilterExpression {
                    expr: Some(Expr::OrGroup(v1::FilterExpressionList {
                        expressions: vec![
                            v1::FilterExpression {
                                expr: Some(Expr::Filter(v1::Filter {
                                    dimension: Some(v1::DimensionSpec {
                                        kind: Some(v1::dimension_spec::Kind::Property("seats".into())),
                                    }),
                                    condition: Some(Condition::Numeric(v1::NumericMatch {
                                        operator: v1::NumericOperator::GreaterThanOrEqual as i32,
                                        value: 2.0,
                                    })),
                                })),
                            },
                            test(v1::Dimension::Referrer, Condition::IsSet(true)),
                            test(
                                v1::Dimension::Hostname,
                                Condition::StringMatch(matching(v1::MatchType::Suffix, ".example")),
                            ),
                        ],
                    })),
                }),
                sample_rate: 0.5,
                include_bots: true,
                ..base.clone()
            },
        ),
        (
            "event-goal-entry-pages",
            v1::RunReportRequest {
                metrics: vec![
                    v1::Metric::ConversionRate as i32,
                    v1::Metric::ViewsPerVisit as i32,
                ],
                dimensions: vec![
                    standard(v1::Dimension::EntryPage),
                    standard(v1::Dimension::DeviceType),
                ],
                conversion_goal: Some(v1::Goal {
                    kind: Some(v1::goal::Kind::EventName("purchase".into())),
                }),
                order_bys: vec![v1::OrderBy {
                    key: Some(v1::order_by::Key::Dimension(standard(v1::Dimension::DeviceType))),
                    desc: false,
                }],
                ..base
            },
        ),
    ];
    requests
        .into_iter()
        .map(|(name, request)| (name.to_owned(), request.encode_to_vec()))
        .collect()
}

/// How `tracker_queue` reads its input: a mode byte (its low two bits say what
/// becomes `queue.ack`), a count byte, for mode 3 the 20 bytes of `queue.ack`,
/// then the bytes of `queue.log`.
pub mod queue_input {
    /// No `queue.ack`.
    pub const NO_ACK: u8 = 0;
    /// A valid `queue.ack` for the log's generation, acknowledging `count` records.
    pub const ACK: u8 = 1;
    /// A valid `queue.ack` for another generation (stale).
    pub const STALE_ACK: u8 = 2;
    /// The next 20 input bytes are `queue.ack`.
    pub const RAW_ACK: u8 = 3;
}

/// Seeds of `tracker_queue`: files written by the real queue.
pub fn tracker_queue_seeds() -> Vec<(String, Vec<u8>)> {
    use queue_input::*;
    let record = |n: usize| format!("{{\"event\":{n},\"payload\":\"{}\"}}", "x".repeat(n % 7)).into_bytes();
    let mut seeds = Vec::new();
    // (name, records pushed, records acknowledged, bytes cut from the end)
    for (name, pushed, acked, cut) in [
        ("empty", 0, 0, 0),
        ("three", 3, 0, 0),
        ("ten-three-acked", 10, 3, 0),
        ("compacted", 10, 7, 0),
        ("torn-tail", 5, 1, 5),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut queue, _) = DiskQueue::open(dir.path(), &QueueConfig::default()).expect("queue");
        for n in 0..pushed {
            queue.push(&record(n)).expect("push");
        }
        queue.ack(acked).expect("ack");
        drop(queue);
        let mut log = std::fs::read(dir.path().join("queue.log")).expect("log");
        log.truncate(log.len() - cut);
        let ack = std::fs::read(dir.path().join("queue.ack")).ok();
        let mut input = match &ack {
            Some(ack) => [&[RAW_ACK, 0][..], ack].concat(),
            None => vec![NO_ACK, 0],
        };
        input.extend(&log);
        seeds.push((name.to_owned(), input));
        if let Some(ack) = ack {
            let acked = u64::from_le_bytes(ack[8..16].try_into().expect("8 bytes"));
            seeds.push((format!("{name}-ack"), [&[ACK, acked as u8][..], &log].concat()));
        }
    }
    seeds
}

/// When `TALLY_FUZZ_WRITE_SEEDS` names a directory, writes `seeds()` into it
/// (one file each) and exits; otherwise does nothing.
pub fn write_seeds_if_asked(seeds: fn() -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("TALLY_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("seed directory");
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
    }
    std::process::exit(0);
}
