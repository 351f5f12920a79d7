//! The generator's fixed vocabulary: places with their address blocks, user
//! agents, referrers, campaigns, app screens and the custom events' values.

/// A city that visitors come from, with the address blocks the generator
/// draws their IPs from (and writes into its geo-IP database).
pub struct Place {
    /// ISO 3166-1 alpha-2 country code; "" for addresses no database knows.
    pub country: &'static str,
    /// Region (subdivision) name, in English.
    pub region: &'static str,
    /// City name, in English.
    pub city: &'static str,
    /// Share of web visitors.
    pub weight: f64,
    /// Local offset from UTC, hours (for the time of day people browse).
    pub utc_offset: i64,
    /// Locale of its browsers.
    pub locale: &'static str,
    /// Pays in euros.
    pub euro: bool,
    /// First two octets of its IPv4 /16.
    pub v4: [u8; 2],
    /// Second 16-bit group of its IPv6 /32 (the first is 0x2a05).
    pub v6: u16,
}

// One row of the table below; positional, so that each place fits on a line.
#[allow(clippy::too_many_arguments)]
const fn place(
    country: &'static str,
    region: &'static str,
    city: &'static str,
    weight: f64,
    utc_offset: i64,
    locale: &'static str,
    euro: bool,
    v4: [u8; 2],
    v6: u16,
) -> Place {
    Place {
        country,
        region,
        city,
        weight,
        utc_offset,
        locale,
        euro,
        v4,
        v6,
    }
}

/// Where people browse from. The last entry's addresses are in no database.
pub const PLACES: &[Place] = &[
    place(
        "US",
        "California",
        "San Francisco",
        10.0,
        -8,
        "en-US",
        false,
        [104, 28],
        0x1001,
    ),
    place(
        "US",
        "New York",
        "New York",
        8.0,
        -5,
        "en-US",
        false,
        [72, 229],
        0x1002,
    ),
    place("US", "Texas", "Austin", 5.0, -6, "en-US", false, [66, 90], 0x1003),
    place("DE", "Berlin", "Berlin", 5.0, 1, "de-DE", true, [87, 123], 0x1004),
    place("DE", "Bavaria", "Munich", 4.0, 1, "de-DE", true, [91, 64], 0x1005),
    place("GB", "England", "London", 7.0, 0, "en-GB", false, [81, 2], 0x1006),
    place(
        "FR",
        "Île-de-France",
        "Paris",
        5.0,
        1,
        "fr-FR",
        true,
        [90, 84],
        0x1007,
    ),
    place(
        "IN",
        "Karnataka",
        "Bengaluru",
        5.0,
        5,
        "en-IN",
        false,
        [49, 207],
        0x1008,
    ),
    place(
        "BR",
        "São Paulo",
        "São Paulo",
        3.0,
        -3,
        "pt-BR",
        false,
        [177, 92],
        0x1009,
    ),
    place(
        "CA",
        "Ontario",
        "Toronto",
        3.0,
        -5,
        "en-CA",
        false,
        [99, 224],
        0x100a,
    ),
    place(
        "NL",
        "North Holland",
        "Amsterdam",
        2.5,
        1,
        "nl-NL",
        true,
        [145, 53],
        0x100b,
    ),
    place("JP", "Tokyo", "Tokyo", 2.5, 9, "ja-JP", false, [126, 72], 0x100c),
    place(
        "SE",
        "Stockholm County",
        "Stockholm",
        1.5,
        1,
        "sv-SE",
        false,
        [89, 160],
        0x100d,
    ),
    place("ES", "Madrid", "Madrid", 1.5, 1, "es-ES", true, [83, 44], 0x100e),
    place(
        "AU",
        "New South Wales",
        "Sydney",
        1.5,
        10,
        "en-AU",
        false,
        [1, 120],
        0x100f,
    ),
    place("PL", "Mazovia", "Warsaw", 1.5, 1, "pl-PL", false, [83, 0], 0x1010),
    place("IT", "Lombardy", "Milan", 1.5, 1, "it-IT", true, [79, 18], 0x1011),
    place(
        "CH",
        "Zurich",
        "Zürich",
        1.0,
        1,
        "de-CH",
        false,
        [178, 197],
        0x1012,
    ),
    // TEST-NET-3: no geo-IP database places it.
    place("", "", "", 1.0, 0, "en-US", false, [203, 0], 0x1013),
];

/// Where crawlers run: data centres.
pub const BOT_PLACES: &[Place] = &[
    place(
        "US",
        "California",
        "Mountain View",
        1.0,
        -8,
        "en-US",
        false,
        [66, 249],
        0x1101,
    ),
    place(
        "US",
        "Virginia",
        "Boydton",
        1.0,
        -5,
        "en-US",
        false,
        [40, 77],
        0x1102,
    ),
    place(
        "DE",
        "Hesse",
        "Frankfurt am Main",
        1.0,
        1,
        "en-US",
        true,
        [5, 255],
        0x1103,
    ),
];

/// A browser family with the user agent template of each version.
pub struct Browser {
    /// Device class, for the visitor's behaviour (mobile visits are shorter).
    pub device: Device,
    /// Share of web visitors.
    pub weight: f64,
    /// Versions, newest first (the newest are the most common).
    pub versions: &'static [&'static str],
    /// The user agent, with `{v}` for the version.
    pub template: &'static str,
}

/// Device classes of web visitors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// Desktop or laptop.
    Desktop,
    /// Phone.
    Mobile,
    /// Tablet.
    Tablet,
    /// TV or console.
    Living,
}

const CHROME: &[&str] = &[
    "127", "126", "125", "124", "123", "122", "121", "120", "119", "118",
];
const FIREFOX: &[&str] = &["128", "127", "126", "125", "124", "115"];
const SAFARI: &[&str] = &["17.5", "17.4", "17.3", "17.1", "16.6", "16.5"];
const IOS: &[&str] = &["17_5", "17_4_1", "17_3", "17_1_2", "16_7_8", "16_6"];
const ANDROID: &[&str] = &["14", "13", "12", "11", "10"];

/// Browsers people use, by share.
pub const BROWSERS: &[Browser] = &[
    Browser {
        device: Device::Desktop,
        weight: 28.0,
        versions: CHROME,
        template: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    },
    Browser {
        device: Device::Desktop,
        weight: 9.0,
        versions: CHROME,
        template: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    },
    Browser {
        device: Device::Desktop,
        weight: 2.5,
        versions: CHROME,
        template: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    },
    Browser {
        device: Device::Desktop,
        weight: 6.0,
        versions: CHROME,
        template: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.2478.80",
    },
    Browser {
        device: Device::Desktop,
        weight: 5.0,
        versions: FIREFOX,
        template: "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    },
    Browser {
        device: Device::Desktop,
        weight: 2.0,
        versions: FIREFOX,
        template: "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    },
    Browser {
        device: Device::Desktop,
        weight: 1.5,
        versions: FIREFOX,
        template: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    },
    Browser {
        device: Device::Desktop,
        weight: 6.0,
        versions: SAFARI,
        template: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v} Safari/605.1.15",
    },
    Browser {
        device: Device::Mobile,
        weight: 17.0,
        versions: IOS,
        template: "Mozilla/5.0 (iPhone; CPU iPhone OS {v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    },
    Browser {
        device: Device::Mobile,
        weight: 2.0,
        versions: CHROME,
        template: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/{v}.0.6478.54 Mobile/15E148 Safari/604.1",
    },
    Browser {
        device: Device::Mobile,
        weight: 13.0,
        versions: ANDROID,
        template: "Mozilla/5.0 (Linux; Android {v}; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    },
    Browser {
        device: Device::Mobile,
        weight: 3.0,
        versions: &["25", "24", "23"],
        template: "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/{v}.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    },
    Browser {
        device: Device::Tablet,
        weight: 3.0,
        versions: IOS,
        template: "Mozilla/5.0 (iPad; CPU OS {v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    },
    Browser {
        device: Device::Tablet,
        weight: 1.0,
        versions: ANDROID,
        template: "Mozilla/5.0 (Linux; Android {v}; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    },
    Browser {
        device: Device::Living,
        weight: 0.3,
        versions: &["6.0", "5.5"],
        template: "Mozilla/5.0 (SMART-TV; LINUX; Tizen {v}) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV Safari/537.36",
    },
    Browser {
        device: Device::Living,
        weight: 0.2,
        versions: &["2.26", "2.20"],
        template: "Mozilla/5.0 (PlayStation; PlayStation 5/{v}) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0 Safari/605.1.15",
    },
];

/// Crawlers and automated browsers, all flagged as bots at ingest.
pub const BOT_AGENTS: &[&str] = &[
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.6367.60 Safari/537.36",
];

/// How a visit arrived, with its share of web visits.
pub const CHANNELS: &[(Channel, f64)] = &[
    (Channel::Direct, 30.0),
    (Channel::Search, 33.0),
    (Channel::Social, 9.0),
    (Channel::Email, 3.0),
    (Channel::Referral, 11.0),
    (Channel::Campaign, 11.0),
    (Channel::ClickId, 3.0),
];

/// Ways into a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Typed in, bookmarks: no referrer.
    Direct,
    /// Search engines.
    Search,
    /// Social networks.
    Social,
    /// Webmail.
    Email,
    /// Other sites.
    Referral,
    /// A tagged link (`utm_*` parameters).
    Campaign,
    /// An ad with only a click id (`gclid`).
    ClickId,
}

/// Referrers by channel, each with a weight.
pub const SEARCH: &[(&str, f64)] = &[
    ("https://www.google.com/", 22.0),
    ("https://www.google.de/", 3.0),
    ("https://www.google.co.uk/", 2.0),
    ("https://www.google.fr/", 1.0),
    ("https://www.bing.com/search?q=self+hosted+analytics", 3.0),
    ("https://duckduckgo.com/", 2.0),
    ("https://search.brave.com/search?q=grpc+analytics", 0.5),
    ("https://www.ecosia.org/search?q=analytics", 0.5),
];

/// Social networks.
pub const SOCIAL: &[(&str, f64)] = &[
    ("https://t.co/Xy7pQ2aB", 3.0),
    (
        "https://www.reddit.com/r/selfhosted/comments/1c2d3e/tally_analytics/",
        2.0,
    ),
    ("https://news.ycombinator.com/item?id=40123456", 2.0),
    ("https://www.linkedin.com/feed/", 1.0),
    ("https://l.facebook.com/l.php?u=https%3A%2F%2Fexample", 1.0),
    ("https://mastodon.social/@rustlang/112233445566", 0.5),
    ("https://old.reddit.com/r/rust/", 0.5),
];

/// Webmail.
pub const EMAIL: &[(&str, f64)] = &[
    ("https://mail.google.com/mail/u/0/", 3.0),
    ("https://outlook.live.com/mail/0/", 1.0),
];

/// Well-known referring sites; the rest of the referral traffic comes from a
/// long tail of blogs (see `model`).
pub const REFERRALS: &[(&str, f64)] = &[
    ("https://github.com/tally-analytics/tally", 4.0),
    ("https://dev.to/ana/building-a-grpc-analytics-backend-4k2j", 1.5),
    (
        "https://stackoverflow.com/questions/78012345/grpc-web-cors-headers",
        1.5,
    ),
    ("https://www.producthunt.com/posts/tally", 1.0),
    ("https://alternativeto.net/software/google-analytics/", 1.0),
];

/// A tagged link: (utm_source, utm_medium, utm_campaign, utm_term, utm_content, referrer, weight).
pub type Campaign = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
);

/// Campaigns.
pub const CAMPAIGNS: &[Campaign] = &[
    ("newsletter", "email", "spring_sale", "", "header_link", "", 4.0),
    (
        "google",
        "cpc",
        "brand",
        "tally analytics",
        "",
        "https://www.google.com/",
        3.0,
    ),
    (
        "facebook",
        "paid_social",
        "retargeting",
        "",
        "carousel",
        "https://l.facebook.com/",
        2.0,
    ),
    (
        "partner_blog",
        "affiliate",
        "launch_week",
        "",
        "",
        "https://partner-blog.example.net/launch",
        1.5,
    ),
    (
        "linkedin",
        "social",
        "launch_week",
        "",
        "video",
        "https://www.linkedin.com/",
        1.0,
    ),
    (
        "bing",
        "cpc",
        "competitor",
        "privacy friendly analytics",
        "",
        "https://www.bing.com/",
        1.0,
    ),
];

/// Screens of the shop app, by popularity.
pub const SCREENS: &[&str] = &[
    "Home",
    "Search",
    "Product",
    "Cart",
    "Orders",
    "Checkout",
    "Profile",
    "Settings",
    "Onboarding",
    "Help",
];

/// App releases: version and the day (from the start of the period) it shipped.
pub const APP_RELEASES: &[(&str, i64)] = &[("4.0.3", -100), ("4.1.0", 7), ("4.1.1", 14), ("4.2.0", 21)];

/// A phone or tablet model that runs the app.
pub struct AppDevice {
    /// Operating system.
    pub os: &'static str,
    /// OS versions in use.
    pub versions: &'static [&'static str],
    /// Model.
    pub model: &'static str,
    /// Manufacturer.
    pub maker: &'static str,
    /// A tablet (else a phone).
    pub tablet: bool,
    /// Share of app users.
    pub weight: f64,
}

const fn device(
    os: &'static str,
    versions: &'static [&'static str],
    model: &'static str,
    maker: &'static str,
    tablet: bool,
    weight: f64,
) -> AppDevice {
    AppDevice {
        os,
        versions,
        model,
        maker,
        tablet,
        weight,
    }
}

/// Phones and tablets of app users.
pub const APP_DEVICES: &[AppDevice] = &[
    device("Android", &["14", "13", "12"], "Pixel 8", "Google", false, 4.0),
    device("Android", &["14", "13"], "SM-S918B", "samsung", false, 4.0),
    device("Android", &["13", "12"], "SM-X700", "samsung", true, 1.0),
    device(
        "iOS",
        &["17.5", "17.4", "16.7"],
        "iPhone15,2",
        "Apple",
        false,
        6.0,
    ),
    device("iOS", &["17.5", "17.4"], "iPad13,18", "Apple", true, 1.5),
];

/// Plans: (name, share of sign-ups, price per seat in cents, USD and EUR).
pub const PLANS: &[(&str, f64, u32, u32)] = &[
    ("free", 6.0, 0, 0),
    ("pro", 3.0, 1200, 1100),
    ("team", 1.0, 2900, 2700),
];

/// Hosts that blog readers click through to.
pub const OUTBOUND: &[&str] = &["github.com", "crates.io", "docs.rs", "grpc.io", "duckdb.org"];

/// Files offered in the docs.
pub const DOWNLOADS: &[(&str, f64)] = &[
    ("tally-linux-x86_64.tar.gz", 18.5),
    ("tally-macos-arm64.tar.gz", 17.25),
    ("tally-windows-x86_64.zip", 19.75),
];

/// What people search the docs for.
pub const SEARCHES: &[&str] = &[
    "retention",
    "grpc-web",
    "funnel",
    "time zone",
    "api key",
    "export",
    "bots",
    "sessions",
];

/// Words that make the long tail of page paths.
pub const TOPICS: &[&str] = &[
    "analytics",
    "privacy",
    "grpc",
    "rust",
    "sessions",
    "funnels",
    "dashboards",
    "retention",
    "cookies",
    "realtime",
    "events",
    "sdk",
    "kotlin",
    "swift",
    "browsers",
    "storage",
    "rollups",
    "sketches",
    "campaigns",
    "referrers",
];
