//! Enrichment: uap-core's public test cases, the crawler list's examples, a
//! table of real referrer and campaign URLs, and the whole pipeline end to
//! end (geo from a `.mmdb` written by these tests, privacy settings, visitor
//! ids) checked through `RunReport` and `ExportEvents`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::StreamExt;
use serde_yaml_ng::Value;
use tally_proto::v1::{self, Dimension as D, Metric as M};
use tally_server::config::Config;
use tally_server::pipeline::{BotDetector, UaParser, classify, crawler_list};

use crate::grpc_web::browser_track;
use crate::harness::*;
use crate::mmdb;

const UAP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/uap-core");

/// One uap-core test case: the user agent and the expected fields.
struct Case {
    ua: String,
    expected: BTreeMap<String, Option<String>>,
}

fn load_cases(file: &str) -> Vec<Case> {
    let path = format!("{UAP}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let text_of = |v: &Value| match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => panic!("unexpected value {other:?} in {file}"),
    };
    doc["test_cases"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|case| {
            let map = case.as_mapping().unwrap();
            let mut expected = BTreeMap::new();
            let mut ua = String::new();
            for (k, v) in map {
                let k = k.as_str().unwrap().to_owned();
                if k == "user_agent_string" {
                    ua = text_of(v).unwrap_or_default();
                } else if k != "js_ua" {
                    expected.insert(k, text_of(v));
                }
            }
            Case { ua, expected }
        })
        .collect()
}

/// Share of `hits` in `total`, in percent.
fn pct(hits: usize, total: usize) -> f64 {
    100.0 * hits as f64 / total.max(1) as f64
}

const UA_FILES: [&str; 5] = [
    "tests/test_ua.yaml",
    "test_resources/firefox_user_agent_strings.yaml",
    "test_resources/opera_mini_user_agent_strings.yaml",
    "test_resources/pgts_browser_list.yaml",
    "test_resources/podcasting_user_agent_strings.yaml",
];
const OS_FILES: [&str; 2] = ["tests/test_os.yaml", "test_resources/additional_os_tests.yaml"];

#[test]
fn uap_core_public_cases() {
    let parser = UaParser::shared();
    let exp = |case: &Case, k: &str| case.expected.get(k).cloned().flatten();

    let (mut total, mut family, mut version) = (0, 0, 0);
    for file in UA_FILES {
        for case in load_cases(file) {
            let got = parser.parse(&case.ua).browser;
            total += 1;
            if Some(&got.family) == exp(&case, "family").as_ref() {
                family += 1;
                let want = ["major", "minor", "patch", "patch_minor"].map(|k| exp(&case, k));
                // Browser cases give major, minor and patch; compare what they give.
                if (0..4).all(|i| {
                    !case
                        .expected
                        .contains_key(["major", "minor", "patch", "patch_minor"][i])
                        || got.version[i] == want[i]
                }) {
                    version += 1;
                }
            }
        }
    }
    println!(
        "uap-core browsers: {total} cases, family {:.2}% exact, family and version {:.2}% exact",
        pct(family, total),
        pct(version, total)
    );
    assert!(total > 10_000, "all browser files were read ({total})");
    assert!(
        pct(family, total) >= 99.0,
        "browser family {:.2}%",
        pct(family, total)
    );

    let (mut total, mut family, mut version) = (0, 0, 0);
    for file in OS_FILES {
        for case in load_cases(file) {
            let got = parser.parse(&case.ua).os;
            total += 1;
            if Some(&got.family) == exp(&case, "family").as_ref() {
                family += 1;
                let want = ["major", "minor", "patch", "patch_minor"].map(|k| exp(&case, k));
                if got.version == want {
                    version += 1;
                }
            }
        }
    }
    println!(
        "uap-core OS: {total} cases, family {:.2}% exact, family and version {:.2}% exact",
        pct(family, total),
        pct(version, total)
    );
    assert!(total > 500, "all OS files were read ({total})");
    assert!(pct(family, total) >= 99.0, "OS family {:.2}%", pct(family, total));

    let (mut total, mut family, mut all) = (0, 0, 0);
    for case in load_cases("tests/test_device.yaml") {
        let got = parser.parse(&case.ua);
        total += 1;
        if Some(&got.device) == exp(&case, "family").as_ref() {
            family += 1;
            if got.brand == exp(&case, "brand") && got.model == exp(&case, "model") {
                all += 1;
            }
        }
    }
    println!(
        "uap-core devices: {total} cases, family {:.2}% exact, family, brand and model {:.2}% exact",
        pct(family, total),
        pct(all, total)
    );
    assert!(total > 10_000, "the device file was read ({total})");
    assert!(
        pct(family, total) >= 99.0,
        "device family {:.2}%",
        pct(family, total)
    );
}

#[test]
fn crawler_examples_are_bots_and_browsers_are_not() {
    let detector = BotDetector::shared();
    let parser = UaParser::shared();
    // Recall over the crawler list's own examples, with the stage's rules:
    // the list's patterns, uap-core's spider class, automation tokens.
    let examples: Vec<String> = crawler_list().into_iter().flat_map(|c| c.instances).collect();
    let missed: Vec<&String> = examples
        .iter()
        .filter(|ua| !detector.is_bot(ua) && parser.parse(ua).device != "Spider")
        .collect();
    println!(
        "crawler list: {} example user agents, {} flagged ({:.2}% recall)",
        examples.len(),
        examples.len() - missed.len(),
        pct(examples.len() - missed.len(), examples.len())
    );
    assert!(examples.len() > 1_000);
    assert!(missed.is_empty(), "not flagged: {missed:#?}");

    // False positives over uap-core's browser cases that uap does not class as spiders.
    let mut browsers = BTreeSet::new();
    for file in UA_FILES {
        for case in load_cases(file) {
            if parser.parse(&case.ua).device != "Spider" {
                browsers.insert(case.ua);
            }
        }
    }
    let flagged: Vec<&String> = browsers.iter().filter(|ua| detector.is_bot(ua)).collect();
    println!(
        "uap-core non-spider user agents: {}, flagged as bots: {} ({:.3}%)",
        browsers.len(),
        flagged.len(),
        pct(flagged.len(), browsers.len())
    );
    assert!(browsers.len() > 10_000);
    assert!(
        pct(flagged.len(), browsers.len()) < 0.5,
        "{:.3}% flagged, e.g. {:#?}",
        pct(flagged.len(), browsers.len()),
        &flagged[..flagged.len().min(20)]
    );
    if std::env::var_os("TALLY_SHOW_FLAGGED").is_some() {
        println!("{flagged:#?}");
    }
}

#[test]
fn referrer_and_campaign_table() {
    let own = ["shop.example", "shop-cdn.example"];
    // (referrer, page query string, source, medium, campaign)
    let table: &[(&str, &str, &str, &str, &str)] = &[
        ("https://www.google.com/", "", "Google", "organic", ""),
        (
            "https://www.google.co.uk/search?q=tally",
            "",
            "Google",
            "organic",
            "",
        ),
        ("https://www.google.com.br/", "", "Google", "organic", ""),
        ("https://google.de/", "", "Google", "organic", ""),
        (
            "android-app://com.google.android.googlequicksearchbox/",
            "",
            "Google",
            "organic",
            "",
        ),
        ("https://www.bing.com/search?q=x", "", "Bing", "organic", ""),
        ("https://duckduckgo.com/", "", "DuckDuckGo", "organic", ""),
        ("https://search.yahoo.com/search?p=x", "", "Yahoo!", "organic", ""),
        ("https://yandex.ru/search/?text=x", "", "Yandex", "organic", ""),
        ("https://www.baidu.com/link?url=x", "", "Baidu", "organic", ""),
        ("https://www.ecosia.org/search?q=x", "", "Ecosia", "organic", ""),
        (
            "https://search.brave.com/search?q=x",
            "",
            "Brave Search",
            "organic",
            "",
        ),
        ("https://www.startpage.com/", "", "Startpage", "organic", ""),
        ("https://www.qwant.com/?q=x", "", "Qwant", "organic", ""),
        (
            "https://search.naver.com/search.naver?query=x",
            "",
            "Naver",
            "organic",
            "",
        ),
        ("https://kagi.com/search?q=x", "", "Kagi", "organic", ""),
        ("https://www.facebook.com/", "", "Facebook", "social", ""),
        ("https://l.facebook.com/l.php?u=x", "", "Facebook", "social", ""),
        ("https://m.facebook.com/", "", "Facebook", "social", ""),
        ("android-app://com.facebook.katana/", "", "Facebook", "social", ""),
        ("https://l.instagram.com/", "", "Instagram", "social", ""),
        ("https://t.co/abc", "", "X", "social", ""),
        ("https://twitter.com/someone/status/1", "", "X", "social", ""),
        ("https://x.com/someone", "", "X", "social", ""),
        ("https://www.linkedin.com/feed/", "", "LinkedIn", "social", ""),
        ("https://lnkd.in/abc", "", "LinkedIn", "social", ""),
        (
            "https://www.reddit.com/r/rust/comments/abc",
            "",
            "Reddit",
            "social",
            "",
        ),
        ("https://old.reddit.com/", "", "Reddit", "social", ""),
        ("https://out.reddit.com/t3_abc", "", "Reddit", "social", ""),
        (
            "https://news.ycombinator.com/item?id=1",
            "",
            "Hacker News",
            "social",
            "",
        ),
        ("https://www.youtube.com/watch?v=x", "", "YouTube", "social", ""),
        ("https://youtu.be/x", "", "YouTube", "social", ""),
        ("https://www.tiktok.com/@someone", "", "TikTok", "social", ""),
        ("https://www.pinterest.co.uk/pin/1", "", "Pinterest", "social", ""),
        ("https://www.threads.net/@someone", "", "Threads", "social", ""),
        ("https://bsky.app/profile/someone", "", "Bluesky", "social", ""),
        ("https://mastodon.social/@someone", "", "Mastodon", "social", ""),
        ("https://lobste.rs/s/abc", "", "Lobsters", "social", ""),
        ("https://web.telegram.org/", "", "Telegram", "social", ""),
        ("https://vk.com/", "", "VK", "social", ""),
        ("https://mail.google.com/mail/u/0/", "", "Gmail", "email", ""),
        ("android-app://com.google.android.gm/", "", "Gmail", "email", ""),
        (
            "https://outlook.live.com/mail/0/inbox",
            "",
            "Outlook",
            "email",
            "",
        ),
        ("https://mail.yahoo.com/", "", "Yahoo! Mail", "email", ""),
        ("https://mail.proton.me/u/0/inbox", "", "Proton Mail", "email", ""),
        ("https://chatgpt.com/", "", "ChatGPT", "referral", ""),
        (
            "https://www.perplexity.ai/search/x",
            "",
            "Perplexity",
            "referral",
            "",
        ),
        ("https://github.com/org/repo", "", "GitHub", "referral", ""),
        (
            "https://en.wikipedia.org/wiki/Web_analytics",
            "",
            "Wikipedia",
            "referral",
            "",
        ),
        (
            "https://news.google.com/articles/x",
            "",
            "Google News",
            "referral",
            "",
        ),
        (
            "https://blog.someone.dev/post",
            "",
            "blog.someone.dev",
            "referral",
            "",
        ),
        ("https://www.someone.dev/", "", "someone.dev", "referral", ""),
        ("https://shop.example/cart", "", "shop.example", "internal", ""),
        ("https://www.shop.example/", "", "shop.example", "internal", ""),
        (
            "https://checkout.shop.example/",
            "",
            "checkout.shop.example",
            "internal",
            "",
        ),
        (
            "https://shop-cdn.example/x",
            "",
            "shop-cdn.example",
            "internal",
            "",
        ),
        ("", "", "Direct", "direct", ""),
        (
            "",
            "utm_source=newsletter&utm_medium=email&utm_campaign=spring",
            "newsletter",
            "email",
            "spring",
        ),
        (
            "",
            "utm_source=google&utm_medium=cpc&utm_campaign=brand",
            "Google",
            "paid",
            "brand",
        ),
        ("https://www.google.com/", "gclid=abc", "Google", "paid", ""),
        ("", "fbclid=IwAR123", "Facebook", "paid", ""),
        ("https://www.bing.com/", "msclkid=abc", "Bing", "paid", ""),
        (
            "https://l.facebook.com/",
            "utm_source=facebook&utm_medium=social",
            "Facebook",
            "social",
            "",
        ),
        ("", "utm_source=fb&utm_medium=paid_social", "Facebook", "paid", ""),
        ("https://t.co/x", "utm_source=twitter", "X", "social", ""),
        (
            "",
            "utm_source=partner-site&utm_medium=affiliate",
            "partner-site",
            "referral",
            "",
        ),
        (
            "",
            "utm_source=linkedin&utm_medium=cpc&utm_campaign=launch",
            "LinkedIn",
            "paid",
            "launch",
        ),
        (
            "",
            "utm_source=Mailchimp&utm_medium=newsletter",
            "Mailchimp",
            "email",
            "",
        ),
        (
            "https://duckduckgo.com/",
            "utm_campaign=winter",
            "DuckDuckGo",
            "organic",
            "winter",
        ),
        ("", "UTM_SOURCE=Bing&UTM_MEDIUM=CPC", "Bing", "paid", ""),
        ("", "utm_source=&utm_medium=", "Direct", "direct", ""),
        (
            "https://shop.example/",
            "utm_source=homepage&utm_medium=promo",
            "homepage",
            "referral",
            "",
        ),
    ];
    assert!(table.len() >= 50);
    let mut wrong = Vec::new();
    for (referrer, query, source, medium, campaign) in table {
        let got = classify(referrer, query, &own);
        if (got.source.as_str(), got.medium, got.campaign.as_str()) != (*source, *medium, *campaign) {
            wrong.push(format!(
                "{referrer:?} ?{query}: got {}/{}/{}, want {source}/{medium}/{campaign}",
                got.source, got.medium, got.campaign
            ));
        }
    }
    println!("referrer table: {} referrer and campaign URLs", table.len());
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        table.len(),
        wrong.join("\n")
    );
    let utm = classify(
        "",
        "utm_source=linkedin&utm_medium=cpc&utm_campaign=launch&utm_term=analytics&utm_content=banner-a",
        &own,
    );
    assert_eq!(
        (
            utm.utm_source.as_str(),
            utm.utm_medium.as_str(),
            utm.utm_term.as_str(),
            utm.utm_content.as_str()
        ),
        ("linkedin", "cpc", "analytics", "banner-a")
    );
}

// User agents with what they must yield: browser, OS, device type.
const UAS: [(&str, &str, &str, &str); 5] = [
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91 Safari/537.36",
        "Chrome",
        "Mac OS X",
        "desktop",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Firefox",
        "Windows",
        "desktop",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
        "Mobile Safari",
        "iOS",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        "Chrome Mobile",
        "Android",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Chrome",
        "Android",
        "tablet",
    ),
];

// Address prefixes with their place in the test database: country, region, city.
const PLACES: [(&str, &str, &str, &str); 5] = [
    ("81.2.69.", "DE", "Bavaria", "Munich"),
    ("2.125.160.", "GB", "England", "London"),
    ("89.160.20.", "SE", "Östergötland", "Linköping"),
    ("2001:db8:1::", "US", "California", "San Francisco"),
    ("192.0.2.", "", "", ""),
];

// Referrer and page query with the source, medium and campaign they must yield.
const ORIGINS: [(&str, &str, &str, &str, &str); 4] = [
    ("https://www.google.com/", "", "Google", "organic", ""),
    (
        "",
        "utm_source=newsletter&utm_medium=email&utm_campaign=spring",
        "newsletter",
        "email",
        "spring",
    ),
    (
        "https://news.ycombinator.com/item?id=1",
        "",
        "Hacker News",
        "social",
        "",
    ),
    ("", "", "Direct", "direct", ""),
];

/// The test database, as two files (IPv4 networks, IPv6 networks), the way
/// the DB-IP lite builds come.
fn geo_databases() -> [Vec<u8>; 2] {
    use mmdb::Value::{Array, Map, Str};
    let nested = |country: &'static str, region: &'static str, city: &'static str| {
        Map(vec![
            ("country", Map(vec![("iso_code", Str(country))])),
            (
                "subdivisions",
                Array(vec![Map(vec![("names", Map(vec![("en", Str(region))]))])]),
            ),
            ("city", Map(vec![("names", Map(vec![("en", Str(city))]))])),
        ])
    };
    let v4 = mmdb::build(
        "GeoLite2-City",
        vec![
            (
                "81.2.69.0".parse().unwrap(),
                24,
                nested("DE", "Bavaria", "Munich"),
            ),
            (
                "2.125.160.0".parse().unwrap(),
                24,
                nested("GB", "England", "London"),
            ),
            // The flat schema of the @ip-location-db builds.
            (
                "89.160.20.0".parse().unwrap(),
                24,
                Map(vec![
                    ("country_code", Str("SE")),
                    ("state1", Str("Östergötland")),
                    ("city", Str("Linköping")),
                ]),
            ),
        ],
    );
    let v6 = mmdb::build(
        "GeoLite2-City",
        vec![(
            "2001:db8:1::".parse().unwrap(),
            48,
            nested("US", "California", "San Francisco"),
        )],
    );
    [v4, v6]
}

/// What the pipeline must make of a sent event, for one dimension.
type Expectation = Box<dyn Fn(&Sent) -> String>;

/// What one test event is, and what the pipeline must make of it.
struct Sent {
    visitor: usize,
    ua: usize,
    place: usize,
    origin: usize,
}

fn address(place: usize, visitor: usize) -> IpAddr {
    let prefix = PLACES[place].0;
    let host = visitor % 250 + 1;
    format!(
        "{prefix}{}",
        if prefix.contains(':') {
            format!("{host:x}")
        } else {
            host.to_string()
        }
    )
    .parse()
    .unwrap()
}

/// Counts pageviews and distinct visitors per value of one enriched field.
fn expected(sent: &[Sent], value: impl Fn(&Sent) -> String) -> BTreeMap<String, (i64, i64)> {
    let mut groups: BTreeMap<String, (i64, BTreeSet<usize>)> = BTreeMap::new();
    for s in sent {
        let entry = groups.entry(value(s)).or_default();
        entry.0 += 1;
        entry.1.insert(s.visitor);
    }
    groups
        .into_iter()
        .map(|(k, (views, visitors))| (k, (views, visitors.len() as i64)))
        .collect()
}

async fn by_dimension(server: &TestServer, dimension: D, include_bots: bool) -> BTreeMap<String, (i64, i64)> {
    let response = report(
        server,
        v1::RunReportRequest {
            site_id: "shop".into(),
            metrics: vec![M::Pageviews as i32, M::Visitors as i32],
            dimensions: vec![standard(dimension)],
            date_ranges: vec![v1::DateRange {
                start_date: "2daysAgo".into(),
                end_date: "today".into(),
                name: String::new(),
            }],
            include_bots,
            limit: 1000,
            ..Default::default()
        },
    )
    .await;
    response
        .rows
        .iter()
        .map(|r| {
            (
                r.dimension_values[0].clone(),
                (int(&r.metric_values[0]), int(&r.metric_values[1])),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriched_fields_are_dimensions_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let [v4, v6] = geo_databases();
    let paths = [
        dir.path().join("city-ipv4.mmdb"),
        dir.path().join("city-ipv6.mmdb"),
    ];
    std::fs::write(&paths[0], v4).unwrap();
    std::fs::write(&paths[1], v6).unwrap();
    let server = TestServer::start_with(Config {
        geoip_db: paths.to_vec(),
        ..Config::default()
    })
    .await;
    let site = v1::Site {
        site_id: "shop".into(),
        domain: "shop.example".into(),
        ..Default::default()
    };
    server
        .admin()
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
        .await
        .unwrap();
    let key = server.key(v1::KeyKind::Ingest, &["shop"]).await;

    // 60 visitors, each with its own address, one of five browsers and
    // places, one of four origins, 1-3 page views; then a crawler.
    let now = now_micros();
    let mut sent = Vec::new();
    let mut events = Vec::new();
    for visitor in 0..60 {
        let (ua, place, origin) = (visitor % 5, (visitor / 5) % 5, visitor % 4);
        for view in 0..=(visitor % 3) {
            let (referrer, query, ..) = ORIGINS[origin];
            let url = match query {
                "" => format!("https://shop.example/p/{view}"),
                q => format!("https://shop.example/p/{view}?{q}"),
            };
            events.push(v1::Event {
                event_id: uuid::Uuid::now_v7().to_string(),
                timestamp: Some(ts(now - 60_000_000 + (visitor * 10 + view) as i64)),
                r#type: v1::EventType::Pageview as i32,
                url,
                referrer: referrer.into(),
                context: Some(v1::Context {
                    user_agent: UAS[ua].0.into(),
                    ip: address(place, visitor).to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            sent.push(Sent {
                visitor,
                ua,
                place,
                origin,
            });
        }
    }
    let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    for i in 0..4 {
        events.push(v1::Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            timestamp: Some(ts(now - 1_000_000 + i)),
            r#type: v1::EventType::Pageview as i32,
            url: format!("https://shop.example/crawl/{i}"),
            context: Some(v1::Context {
                user_agent: googlebot.into(),
                ip: "66.249.66.1".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let reply = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "shop".into(),
                events: events.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted as usize, events.len(), "{reply:?}");

    let checks: [(D, Expectation); 9] = [
        (D::Browser, Box::new(|s| UAS[s.ua].1.into())),
        (D::Os, Box::new(|s| UAS[s.ua].2.into())),
        (D::DeviceType, Box::new(|s| UAS[s.ua].3.into())),
        (D::Country, Box::new(|s| PLACES[s.place].1.into())),
        (D::Region, Box::new(|s| PLACES[s.place].2.into())),
        (D::City, Box::new(|s| PLACES[s.place].3.into())),
        (D::Source, Box::new(|s| ORIGINS[s.origin].2.into())),
        (D::Medium, Box::new(|s| ORIGINS[s.origin].3.into())),
        (D::Campaign, Box::new(|s| ORIGINS[s.origin].4.into())),
    ];
    for (dimension, value) in &checks {
        assert_eq!(
            by_dimension(&server, *dimension, false).await,
            expected(&sent, value),
            "{dimension:?}"
        );
    }
    // The crawler is stored, flagged, and counted only on request.
    let with_bots = by_dimension(&server, D::DeviceType, true).await;
    assert_eq!(with_bots.get("bot"), Some(&(4, 1)), "{with_bots:?}");

    // The raw events carry every enriched field; no address anywhere.
    let mut export = server
        .admin()
        .export_events(authed(
            ADMIN_KEY,
            v1::ExportEventsRequest {
                site_id: "shop".into(),
                time_range: Some(v1::TimeRange {
                    start_time: Some(ts(now - 3_600_000_000)),
                    end_time: Some(ts(now + 1)),
                }),
                include_bots: true,
                chunk_size: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(chunk) = export.next().await {
        exported.extend(chunk.unwrap().events);
    }
    assert_eq!(exported.len(), events.len());
    let first = exported
        .iter()
        .find(|e| e.url == "https://shop.example/p/0" && e.browser == "Chrome" && e.country == "DE")
        .unwrap_or_else(|| panic!("an event of visitor 0: {:#?}", &exported[..2]));
    assert_eq!(
        (
            first.os.as_str(),
            first.os_version.as_str(),
            first.browser_version.as_str()
        ),
        ("Mac OS X", "10.15", "124.0")
    );
    assert_eq!(
        (first.region.as_str(), first.city.as_str()),
        ("Bavaria", "Munich")
    );
    assert_eq!(
        (first.source.as_str(), first.medium.as_str()),
        ("Google", "organic")
    );
    assert_eq!(exported.iter().filter(|e| e.bot).count(), 4);
    let text = format!("{exported:?}");
    assert!(!text.contains("81.2.69."), "no client address is stored");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_requests_are_parsed_and_privacy_settings_exclude() {
    let server = TestServer::start().await;
    let site = v1::Site {
        site_id: "s".into(),
        domain: "s.example".into(),
        honor_do_not_track: true,
        excluded_ip_ranges: vec!["127.0.0.0/8".into()],
        ..Default::default()
    };
    server
        .admin()
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
        .await
        .unwrap();
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let firefox =
        "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n";
    let track = |id: u128, ip: &str| v1::TrackRequest {
        site_id: "s".into(),
        events: vec![v1::Event {
            context: Some(v1::Context {
                ip: ip.into(),
                ..Default::default()
            }),
            ..pageview(id, now_micros(), "https://s.example/", "")
        }],
    };
    // The browser comes from loopback, which the site excludes; a forwarded
    // address outside the range is tracked.
    let (_, excluded) = browser_track(server.addr, &key, &track(1, ""), firefox).await;
    assert_eq!(
        excluded.results[0].verdict(),
        v1::Verdict::Excluded,
        "{excluded:?}"
    );
    assert_eq!(excluded.excluded, 1);
    assert!(excluded.results[0].message.contains("excluded IP ranges"));
    let (_, accepted) = browser_track(server.addr, &key, &track(2, "203.0.113.9"), firefox).await;
    assert_eq!(accepted.accepted, 1, "{accepted:?}");
    // Do-Not-Track and Global Privacy Control are honored.
    for header in ["DNT: 1\r\n", "Sec-GPC: 1\r\n"] {
        let (_, reply) = browser_track(
            server.addr,
            &key,
            &track(3, "203.0.113.9"),
            &format!("{firefox}{header}"),
        )
        .await;
        assert_eq!(
            reply.results[0].verdict(),
            v1::Verdict::Excluded,
            "{header}: {reply:?}"
        );
        assert!(reply.results[0].message.contains("Do-Not-Track"));
    }
    // A browser without a user agent is a bot; a backend client without one is not.
    let (_, no_agent) = browser_track(server.addr, &key, &track(4, "203.0.113.10"), "").await;
    assert_eq!(no_agent.accepted, 1);
    let backend = server
        .ingest()
        .track(authed(&key, track(5, "203.0.113.11")))
        .await
        .unwrap();
    assert_eq!(backend.into_inner().accepted, 1);

    let devices = by_dimension_site(&server, "s", D::Browser, true).await;
    assert_eq!(
        devices,
        BTreeMap::from([("Firefox".to_owned(), 1), ("".to_owned(), 2)]),
        "the browser's header was parsed; the two without user agent have no browser"
    );
    let humans = by_dimension_site(&server, "s", D::DeviceType, false).await;
    assert_eq!(
        humans,
        BTreeMap::from([("desktop".to_owned(), 1), ("".to_owned(), 1)])
    );

    // Bad ranges are refused with the field named.
    let bad = server
        .admin()
        .update_site(authed(
            ADMIN_KEY,
            v1::UpdateSiteRequest {
                site: Some(v1::Site {
                    site_id: "s".into(),
                    excluded_ip_ranges: vec!["10.0.0.0/8".into(), "10.0.0.300".into()],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["excluded_ip_ranges".into()],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("excluded_ip_ranges[1]"),
        "{}",
        bad.message()
    );
    server.stop().await;
}

async fn by_dimension_site(
    server: &TestServer,
    site: &str,
    dimension: D,
    include_bots: bool,
) -> BTreeMap<String, i64> {
    report(
        server,
        v1::RunReportRequest {
            site_id: site.into(),
            metrics: vec![M::Pageviews as i32],
            dimensions: vec![standard(dimension)],
            date_ranges: vec![v1::DateRange {
                start_date: "today".into(),
                end_date: "today".into(),
                name: String::new(),
            }],
            include_bots,
            ..Default::default()
        },
    )
    .await
    .rows
    .iter()
    .map(|r| (r.dimension_values[0].clone(), int(&r.metric_values[0])))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookieless_visitors_hash_site_address_and_agent() {
    let server = TestServer::start().await;
    server.site("a", "UTC").await;
    server.site("b", "UTC").await;
    let key = server.key(v1::KeyKind::Admin, &[]).await;
    let event = |id: u128, ip: &str, ua: &str| v1::Event {
        context: Some(v1::Context {
            ip: ip.into(),
            user_agent: ua.into(),
            ..Default::default()
        }),
        ..pageview(id, now_micros(), "https://a.example/", "")
    };
    let (chrome, firefox) = (UAS[0].0, UAS[1].0);
    // Same address and agent: one visitor; another agent or address: another.
    let batch = [
        event(1, "203.0.113.1", chrome),
        event(2, "203.0.113.1", chrome),
        event(3, "203.0.113.1", firefox),
        event(4, "203.0.113.2", chrome),
    ];
    for (site, first_id) in [("a", 1u128), ("b", 101)] {
        let events = batch
            .iter()
            .zip(first_id..)
            .map(|(e, id)| v1::Event {
                event_id: uuid::Uuid::from_u128(id).to_string(),
                ..e.clone()
            })
            .collect();
        let reply = server
            .ingest()
            .track(authed(
                &key,
                v1::TrackRequest {
                    site_id: site.into(),
                    events,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.accepted, 4, "{reply:?}");
    }
    let ids = |site: &'static str| {
        let server = &server;
        async move {
            let mut stream = server
                .admin()
                .export_events(authed(
                    ADMIN_KEY,
                    v1::ExportEventsRequest {
                        site_id: site.into(),
                        time_range: Some(v1::TimeRange {
                            start_time: Some(ts(now_micros() - 3_600_000_000)),
                            end_time: Some(ts(now_micros() + 1)),
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            let mut ids = Vec::new();
            while let Some(chunk) = stream.next().await {
                ids.extend(
                    chunk
                        .unwrap()
                        .events
                        .into_iter()
                        .map(|e| (e.event_id, e.visitor_id)),
                );
            }
            ids.sort();
            ids.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
        }
    };
    let (a, b) = (ids("a").await, ids("b").await);
    assert_eq!(a[0], a[1]);
    assert_ne!(a[0], a[2]);
    assert_ne!(a[0], a[3]);
    assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_ne!(x, y, "a visitor id of one site says nothing about another site");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_from_a_trusted_proxy_header() {
    let server = TestServer::start_with(Config {
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Config::default()
    })
    .await;
    let site = v1::Site {
        site_id: "s".into(),
        domain: "s.example".into(),
        excluded_ip_ranges: vec!["198.51.100.0/24".into()],
        ..Default::default()
    };
    server
        .admin()
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
        .await
        .unwrap();
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let send = |id: u128, forwarded: Option<&'static str>| {
        let mut ingest = server.ingest();
        let key = key.clone();
        async move {
            let mut request = authed(
                &key,
                v1::TrackRequest {
                    site_id: "s".into(),
                    events: vec![pageview(id, now_micros(), "https://s.example/", "v")],
                },
            );
            if let Some(value) = forwarded {
                request
                    .metadata_mut()
                    .insert("x-forwarded-for", value.parse().unwrap());
            }
            ingest.track(request).await.unwrap().into_inner().results[0].verdict()
        }
    };
    // The proxy's header names the client: the first address counts.
    assert_eq!(
        send(1, Some("198.51.100.7, 10.0.0.1")).await,
        v1::Verdict::Excluded
    );
    assert_eq!(
        send(2, Some("203.0.113.7, 198.51.100.7")).await,
        v1::Verdict::Accepted
    );
    // Without the header (or with garbage in it), the peer address counts.
    assert_eq!(send(3, None).await, v1::Verdict::Accepted);
    assert_eq!(send(4, Some("not an address")).await, v1::Verdict::Accepted);
    server.stop().await;
}
