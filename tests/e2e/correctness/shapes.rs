//! The report shapes checked against DuckDB: each a `RunReport` request and
//! its dimensions and filter in SQL (see `report_sql` for what they share).
//!
//! To add a shape, append it here. Dimensions are SQL over the exported
//! columns (`path`, `hostname`, `source`, `device`, `kind`, `entry`, ...,
//! `{tz}` for the report's time zone); filters are SQL predicates written
//! from the filter's documented meaning (case-insensitive unless
//! `case_sensitive`, a missing value never matches a string condition).

use chrono::{Days, NaiveDate};
use tally_proto::v1::{Dimension as D, MatchType as T, Metric as M, NumericOperator as Op};

use super::report_sql::{Shape, and, in_list, is_set, matches, not, numeric, or, prop_dim, shape, std_dim};

const MINUTE: &str = r#"strftime(timezone({tz}, "timestamp"), '%Y-%m-%dT%H:%M')"#;
const HOUR: &str = r#"strftime(timezone({tz}, "timestamp"), '%Y-%m-%dT%H:00')"#;
const DAY: &str = r#"strftime(timezone({tz}, "timestamp"), '%Y-%m-%d')"#;
const WEEK: &str = r#"strftime(date_trunc('week', timezone({tz}, "timestamp")), '%Y-%m-%d')"#;
const MONTH: &str = r#"strftime(timezone({tz}, "timestamp"), '%Y-%m')"#;

/// Dates of the data set: its last full day, and today (for relative dates).
#[derive(Clone, Copy)]
pub struct Dates {
    /// The last full day of the generated events, in the site's time zone.
    pub last: NaiveDate,
    /// Today in the site's time zone.
    pub today: NaiveDate,
}

impl Dates {
    /// `n` days before the last day (after it when negative), as "YYYY-MM-DD".
    fn day(&self, n: i64) -> String {
        (self.last - chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    }

    /// `n` days before the last day, as "NdaysAgo".
    fn ago(&self, n: u64) -> String {
        format!("{}daysAgo", (self.today - (self.last - Days::new(n))).num_days())
    }
}

/// Every shape.
pub fn all(dates: Dates) -> Vec<Shape> {
    let day = |n: i64| dates.day(n);
    let ago = |n: u64| dates.ago(n);
    vec![
        shape("overview_all_metrics")
            .metrics(&[
                M::Visitors,
                M::Visits,
                M::Pageviews,
                M::Events,
                M::ViewsPerVisit,
                M::BounceRate,
                M::VisitDuration,
                M::TimeOnPage,
            ])
            .range(&ago(27), &ago(0)),
        shape("default_range").metrics(&[M::Pageviews, M::Visitors, M::Visits]),
        shape("daily_in_site_zone")
            .metrics(&[M::Visitors, M::Pageviews, M::Visits])
            .dim(D::TimeDay, DAY)
            .range(&day(27), &day(0)),
        // The data set's weeks in March hold both spring changes: the second
        // Sunday in New York, the last Sunday in Berlin.
        shape("hourly_new_york_over_dst")
            .metrics(&[M::Pageviews, M::Visitors])
            .dim(D::TimeHour, HOUR)
            .tz("America/New_York")
            .range(&day(27), &day(14))
            .limit(100_000),
        shape("hourly_berlin_over_dst")
            .metrics(&[M::Pageviews, M::Visits, M::TimeOnPage])
            .dim(D::TimeHour, HOUR)
            .range(&ago(6), &ago(0))
            .limit(100_000),
        shape("daily_new_york_over_dst")
            .metrics(&[M::Visitors, M::Events])
            .dim(D::TimeDay, DAY)
            .tz("America/New_York")
            .range(&day(27), &day(14)),
        shape("weekly_utc")
            .metrics(&[M::Visitors, M::Visits, M::BounceRate])
            .dim(D::TimeWeek, WEEK)
            .tz("UTC")
            .range(&day(16), &day(0)),
        // The last days in the site's zone: March ends with the clock change,
        // and the period's last hours fall on April 1 there.
        shape("monthly_in_site_zone")
            .metrics(&[M::Pageviews, M::Events, M::Visitors])
            .dim(D::TimeMonth, MONTH)
            .range(&day(3), &day(-1)),
        shape("minutes_of_pricing_one_day")
            .metrics(&[M::Pageviews, M::Visitors])
            .dim(D::TimeMinute, MINUTE)
            .range(&day(2), &day(2))
            .filter(
                matches(std_dim(D::Page), T::Exact, "/PRICING", false),
                "lower(path) = '/pricing'",
            )
            .limit(100_000),
        shape("top_10_pages_7_days")
            .metrics(&[M::Pageviews, M::Visitors])
            .dim(D::Page, "path")
            .range(&ago(6), &ago(0))
            .limit(10),
        shape("pages_by_visitors_third_page")
            .metrics(&[M::Visitors, M::Pageviews, M::TimeOnPage])
            .dim(D::Page, "path")
            .range(&day(9), &day(1))
            .order_metric(M::Visitors, true)
            .limit(20)
            .offset(40),
        shape("pages_by_name_descending")
            .metrics(&[M::Pageviews])
            .dim(D::Page, "path")
            .order_dim(std_dim(D::Page), true)
            .range(&day(1), &day(0))
            .limit(15),
        shape("entry_pages")
            .metrics(&[M::Visits, M::BounceRate, M::VisitDuration])
            .dim(D::EntryPage, "entry")
            .range(&day(6), &day(0))
            .order_metric(M::Visits, true)
            .limit(50),
        shape("exit_pages_of_blog")
            .metrics(&[M::Visits, M::Pageviews])
            .dim(D::ExitPage, "exit")
            .range(&day(13), &day(7))
            .filter(
                matches(std_dim(D::Hostname), T::Prefix, "BLOG.", false),
                "starts_with(lower(hostname), 'blog.')",
            ),
        shape("hostnames_time_on_page")
            .metrics(&[M::Pageviews, M::Visitors, M::TimeOnPage])
            .dim(D::Hostname, "hostname")
            .range(&ago(6), &ago(0)),
        shape("referrers_social_and_referral")
            .metrics(&[M::Visitors, M::Visits])
            .dim(D::Referrer, "referrer_text(referrer)")
            .range(&ago(13), &ago(7))
            .filter(
                in_list(std_dim(D::Medium), &["Social", "REFERRAL"], false),
                "lower(medium) IN ('social', 'referral')",
            )
            .limit(25),
        shape("source_and_medium")
            .metrics(&[M::Visitors, M::Visits, M::BounceRate])
            .dim(D::Source, "source")
            .dim(D::Medium, "medium")
            .range(&day(9), &day(3))
            .limit(40),
        shape("campaign_tags")
            .metrics(&[M::Visitors, M::Pageviews])
            .dim(D::Campaign, "campaign")
            .dim(D::UtmSource, "utm_source")
            .dim(D::UtmMedium, "utm_medium")
            .dim(D::UtmTerm, "utm_term")
            .dim(D::UtmContent, "utm_content")
            .range(&ago(6), &ago(0))
            .filter(is_set(std_dim(D::Campaign), true), "campaign <> ''"),
        shape("country_region_city")
            .metrics(&[M::Visitors, M::Pageviews])
            .dim(D::Country, "country")
            .dim(D::Region, "region")
            .dim(D::City, "city")
            .range(&ago(13), &ago(7)),
        shape("devices_and_browsers")
            .metrics(&[M::Visitors, M::ViewsPerVisit])
            .dim(D::DeviceType, "device")
            .dim(D::Browser, "browser")
            .range(&day(9), &day(3)),
        shape("chrome_124_and_newer")
            .metrics(&[M::Visitors, M::Pageviews])
            .dim(D::Browser, "browser")
            .dim(D::BrowserVersion, "browser_version")
            .dim(D::Os, "os")
            .range(&ago(6), &ago(0))
            .filter(
                and(vec![
                    matches(std_dim(D::Browser), T::Contains, "chrome", false),
                    numeric(std_dim(D::BrowserVersion), Op::GreaterThanOrEqual, 124.0),
                ]),
                "contains(lower(browser), 'chrome') AND TRY_CAST(trim(browser_version) AS DOUBLE) >= 124",
            ),
        shape("app_versions_and_os")
            .metrics(&[M::Visitors, M::Visits, M::Pageviews, M::ViewsPerVisit])
            .dim(D::AppVersion, "app_version")
            .dim(D::Os, "os")
            .dim(D::OsVersion, "os_version")
            .range(&ago(13), &ago(7))
            .filter(
                matches(std_dim(D::EventType), T::Exact, "screen_view", true),
                "kind = 'screen_view'",
            ),
        shape("event_names_and_types")
            .metrics(&[M::Events, M::Visitors])
            .dim(D::EventName, "name")
            .dim(D::EventType, "kind")
            .range(&day(9), &day(3))
            .limit(100),
        shape("signup_plans")
            .metrics(&[M::Events, M::Visitors])
            .prop("plan")
            .range(&ago(6), &ago(0))
            .filter(
                matches(std_dim(D::EventName), T::Exact, "signup", true),
                "name = 'signup'",
            ),
        shape("purchases_over_5_seats")
            .metrics(&[M::Events, M::Visitors])
            .prop("seats")
            .prop("plan")
            .range(&ago(13), &ago(7))
            .filter(
                and(vec![
                    in_list(std_dim(D::EventName), &["purchase"], true),
                    numeric(prop_dim("seats"), Op::GreaterThan, 5.0),
                ]),
                "name IN ('purchase') AND prop_num(properties, 'seats') > 5",
            ),
        shape("newsletter_signups_by_country")
            .metrics(&[M::Visitors, M::Events])
            .dim(D::Country, "country")
            .range(&day(9), &day(3))
            .filter(
                matches(prop_dim("newsletter"), T::Exact, "TRUE", false),
                "lower(coalesce(prop_text(properties, 'newsletter'), '')) = 'true'",
            ),
        shape("download_sizes_as_text")
            .metrics(&[M::Events, M::Visitors])
            .prop("file")
            .prop("size_mb")
            .range(&ago(6), &ago(0))
            .filter(
                is_set(prop_dim("size_mb"), true),
                "prop_text(properties, 'size_mb') IS NOT NULL",
            ),
        shape("cart_prices_between_20_and_30")
            .metrics(&[M::Events, M::Visitors])
            .prop("price")
            .range(&ago(13), &ago(7))
            .filter(
                and(vec![
                    numeric(prop_dim("price"), Op::GreaterThanOrEqual, 20.0),
                    numeric(prop_dim("price"), Op::LessThan, 30.0),
                ]),
                "prop_num(properties, 'price') >= 20 AND prop_num(properties, 'price') < 30",
            ),
        shape("blog_posts_by_regex")
            .metrics(&[M::Pageviews, M::TimeOnPage])
            .dim(D::Page, "path")
            .range(&day(9), &day(3))
            .filter(
                matches(std_dim(D::Page), T::Regex, "^/posts/.*-(matters|practice)$", true),
                "regexp_matches(path, '^/posts/.*-(matters|practice)$')",
            ),
        shape("docs_pages_or_with_case_flags")
            .metrics(&[M::Pageviews, M::Visitors])
            .dim(D::Hostname, "hostname")
            .dim(D::Page, "path")
            .range(&ago(6), &ago(0))
            .filter(
                or(vec![
                    matches(std_dim(D::Page), T::Contains, "GUIDE", false),
                    matches(std_dim(D::Page), T::Prefix, "/api/", true),
                    matches(std_dim(D::Page), T::Suffix, "/Rust", true),
                ]),
                "contains(lower(path), 'guide') OR starts_with(path, '/api/') OR ends_with(path, '/Rust')",
            ),
        shape("europe_not_direct")
            .metrics(&[M::Visits, M::Visitors])
            .dim(D::Source, "source")
            .range(&ago(13), &ago(7))
            .filter(
                and(vec![
                    in_list(std_dim(D::Country), &["de", "FR", "nl"], false),
                    not(matches(std_dim(D::Medium), T::Exact, "direct", true)),
                ]),
                "lower(country) IN ('de', 'fr', 'nl') AND NOT (medium = 'direct')",
            ),
        shape("browsers_without_country")
            .metrics(&[M::Visitors, M::Events])
            .dim(D::Browser, "browser")
            .range(&day(9), &day(3))
            .filter(is_set(std_dim(D::Country), false), "country = ''"),
        shape("bots_included")
            .bots()
            .metrics(&[M::Visitors, M::Pageviews])
            .dim(D::DeviceType, "device")
            .dim(D::Browser, "browser")
            .range(&ago(6), &ago(0)),
        shape("two_named_weeks")
            .metrics(&[M::Visitors, M::Pageviews, M::BounceRate])
            .dim(D::DeviceType, "device")
            .named_range("this_week", &ago(6), &ago(0))
            .named_range("last_week", &ago(13), &ago(7)),
        shape("three_overlapping_ranges_new_york")
            .metrics(&[M::Visits, M::TimeOnPage, M::VisitDuration])
            .dim(D::Medium, "medium")
            .tz("America/New_York")
            .range(&day(12), &day(8))
            .range(&day(10), &day(5))
            .range(&day(4), &day(3)),
        // Today has no events (the data set ends earlier): no rows, zero totals.
        shape("today_is_empty")
            .metrics(&[M::Visitors, M::Pageviews, M::BounceRate, M::TimeOnPage])
            .dim(D::Page, "path")
            .range("yesterday", "today"),
        shape("case_sensitive_miss")
            .metrics(&[M::Pageviews, M::Visitors, M::BounceRate])
            .dim(D::Page, "path")
            .range(&ago(13), &ago(7))
            .filter(
                matches(std_dim(D::Page), T::Exact, "/Pricing", true),
                "path = '/Pricing'",
            ),
    ]
}
