//! `GetMetadata`: what a site's reports can use.

use std::collections::BTreeMap;

use futures::StreamExt;
use tally_proto::v1::{self, Dimension as D, Metric as M};

use super::plan::metric_type;
use crate::domain::{SiteId, SiteRecord};
use crate::error::Result;
use crate::rollup::{Rollups, note_property_kinds, property_kind_names};
use crate::storage::Store;

/// Days of raw events read for property keys when no rollups are kept.
const SCAN_DAYS: i64 = 30;

const METRICS: [(M, &str); 10] = [
    (M::Visitors, "Unique visitors (distinct visitor ids)."),
    (M::Visits, "Visits (sessions)."),
    (M::Pageviews, "Page and screen views."),
    (
        M::Events,
        "All events, page and screen views included (identify events excluded).",
    ),
    (M::ViewsPerVisit, "Page views per visit."),
    (
        M::BounceRate,
        "Share of visits with one page view and no engagement, in percent.",
    ),
    (
        M::VisitDuration,
        "Mean visit duration in seconds (first to last event of the visit).",
    ),
    (
        M::TimeOnPage,
        "Mean time on page in seconds (time to the next page view in the same visit).",
    ),
    (
        M::ConversionRate,
        "Share of visitors who reached the request's conversion goal, in percent.",
    ),
    (M::Revenue, "Sum of event revenue in the request's currency."),
];

const DIMENSIONS: [(D, &str); 29] = [
    (
        D::TimeMinute,
        "Minute in the report time zone, \"YYYY-MM-DDTHH:MM\".",
    ),
    (D::TimeHour, "Hour in the report time zone, \"YYYY-MM-DDTHH:00\"."),
    (D::TimeDay, "Day in the report time zone, \"YYYY-MM-DD\"."),
    (
        D::TimeWeek,
        "ISO week (starting Monday), as the date of its Monday.",
    ),
    (D::TimeMonth, "Month, \"YYYY-MM\"."),
    (D::Page, "Page path (web) or screen name (apps)."),
    (D::EntryPage, "First page of the visit."),
    (D::ExitPage, "Last page of the visit."),
    (D::Hostname, "Host name of the page URL."),
    (
        D::Referrer,
        "Referrer URL (host and path, without the query string).",
    ),
    (D::Source, "Traffic source, e.g. \"Google\"."),
    (D::Medium, "Traffic medium, e.g. \"organic\"."),
    (D::Campaign, "utm_campaign."),
    (D::UtmSource, "utm_source."),
    (D::UtmMedium, "utm_medium."),
    (D::UtmTerm, "utm_term."),
    (D::UtmContent, "utm_content."),
    (D::Country, "ISO 3166-1 alpha-2 country code."),
    (D::Region, "ISO 3166-2 region code."),
    (D::City, "City name."),
    (
        D::DeviceType,
        "Device class: desktop, mobile, tablet, tv, console, bot.",
    ),
    (D::Browser, "Browser family."),
    (D::BrowserVersion, "Browser version."),
    (D::Os, "Operating system family."),
    (D::OsVersion, "Operating system version."),
    (D::AppVersion, "App version."),
    (D::EventName, "Event name (\"pageview\" for page views)."),
    (
        D::EventType,
        "Event type: pageview, custom, screen_view, engagement.",
    ),
    (D::DateRange, "Name of the date range, when a report has several."),
];

/// The site's metadata.
pub async fn metadata(
    store: &dyn Store,
    rollups: &Rollups,
    site: &SiteRecord,
    now_micros: i64,
) -> Result<v1::Metadata> {
    let kinds = match rollups.read(&site.site_id, |r| r.properties.clone()) {
        Some(kinds) => kinds,
        None => {
            let mut kinds = BTreeMap::new();
            let id = SiteId::parse(&site.site_id)?;
            let from = now_micros - SCAN_DAYS * 86_400_000_000;
            let mut chunks = store.scan(&id, from, i64::MAX);
            while let Some(chunk) = chunks.next().await {
                for e in chunk? {
                    note_property_kinds(&mut kinds, &e);
                }
            }
            kinds
        }
    };
    Ok(v1::Metadata {
        metrics: METRICS
            .iter()
            .map(|(m, description)| v1::MetricInfo {
                metric: *m as i32,
                r#type: metric_type(*m) as i32,
                description: (*description).to_owned(),
            })
            .collect(),
        dimensions: DIMENSIONS
            .iter()
            .map(|(d, description)| v1::DimensionInfo {
                dimension: *d as i32,
                description: (*description).to_owned(),
            })
            .collect(),
        property_keys: kinds
            .into_iter()
            .map(|(key, bits)| v1::PropertyKeyInfo {
                key,
                value_types: property_kind_names(bits),
            })
            .collect(),
    })
}
