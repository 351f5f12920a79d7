//! Export round trip: an event with every field a client can set comes back
//! from `ExportEvents` with each of them, as stored and enriched.

use futures::StreamExt;
use tally_proto::v1;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trips_every_stored_field() {
    let server = TestServer::start().await;
    server.site("rt", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["rt"]).await;
    let now = now_micros();
    let at = now - now.rem_euclid(1_000_000) - 5_000_000;
    let prop = |v: v1::property_value::Value| v1::PropertyValue { value: Some(v) };
    let sent = v1::Event {
        event_id: "0192d0a4-8b2e-7cc1-9f3a-2f1e5b6c7d01".into(),
        timestamp: Some(ts(at)),
        r#type: v1::EventType::Custom as i32,
        name: "purchase".into(),
        url: "https://rt.example/shop/cart?item=42&utm_source=news&utm_medium=email&utm_campaign=spring&utm_term=shoes&utm_content=hero"
            .into(),
        referrer: "https://mail.example.org/inbox?id=1".into(),
        properties: [
            ("plan".to_owned(), prop(v1::property_value::Value::StringValue("pro".into()))),
            ("seats".to_owned(), prop(v1::property_value::Value::NumberValue(3.5))),
            ("trial".to_owned(), prop(v1::property_value::Value::BoolValue(true))),
        ]
        .into(),
        revenue: Some(v1::Money {
            currency_code: "EUR".into(),
            units: 12,
            nanos: 340_000_000,
        }),
        user_id: "user-7".into(),
        anonymous_id: "device-7".into(),
        session: Some(v1::SessionHint {
            session_id: "app-session-1".into(),
            session_start: true,
        }),
        context: Some(v1::Context {
            app_version: "3.1.4".into(),
            locale: "de-AT".into(),
            os_name: "Android".into(),
            os_version: "14".into(),
            device_type: v1::DeviceType::Tablet as i32,
            ..Default::default()
        }),
        non_interaction: true,
        ..Default::default()
    };
    let answer = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "rt".into(),
                events: vec![sent.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 1, "{:?}", answer.results);

    let mut stream = server
        .admin()
        .export_events(authed(
            ADMIN_KEY,
            v1::ExportEventsRequest {
                site_id: "rt".into(),
                time_range: Some(v1::TimeRange {
                    start_time: Some(ts(at)),
                    end_time: Some(ts(at + 1)),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend(chunk.unwrap().events);
    }
    assert_eq!(got.len(), 1);
    let e = &got[0];
    assert_eq!(e.event_id, sent.event_id);
    assert_eq!(e.timestamp, sent.timestamp);
    let received = tally_server::convert::timestamp_to_micros(e.received_at.as_ref().unwrap());
    assert!(received >= now - 1_000_000 && received <= now_micros());
    assert_eq!(e.r#type, sent.r#type);
    assert_eq!(e.name, "purchase");
    // The page keeps its own query parameters; the campaign tags move to their fields.
    assert_eq!(e.url, "https://rt.example/shop/cart?item=42");
    assert_eq!(
        (e.hostname.as_str(), e.path.as_str()),
        ("rt.example", "/shop/cart")
    );
    assert_eq!(e.referrer, sent.referrer);
    assert_eq!(e.properties, sent.properties);
    assert_eq!(e.revenue, sent.revenue);
    assert_eq!(e.visitor_id.len(), 16, "a pseudonymous visitor id, 16 hex digits");
    assert!(e.visitor_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!e.session_id.is_empty());
    assert_eq!(e.user_id, "user-7");
    assert!(!e.bot);
    assert_eq!((e.os.as_str(), e.os_version.as_str()), ("Android", "14"));
    assert_eq!(e.device_type, v1::DeviceType::Tablet as i32);
    assert_eq!(
        (e.utm_source.as_str(), e.utm_medium.as_str(), e.campaign.as_str()),
        ("news", "email", "spring")
    );
    assert_eq!((e.utm_term.as_str(), e.utm_content.as_str()), ("shoes", "hero"));
    assert_eq!(e.medium, "email");
    assert!(!e.source.is_empty());
    assert_eq!(e.app_version, "3.1.4");
    assert_eq!(e.locale, "de-AT");
    assert!(e.non_interaction);
    server.stop().await;
}
