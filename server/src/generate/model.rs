//! The data set's model: who visits, when, from where, and what they do.
//!
//! [`plan`] draws every event from one seeded stream into a compact form
//! ([`Planned`]), sorted by time; [`Plan::event`] turns one into the
//! `tally.v1.Event` that is sent. Four kinds of visitors:
//!
//! - **web**: browsers, sent as a backend forwards them (`context.user_agent`,
//!   `context.ip`), without an anonymous id, so the server derives the
//!   cookieless visitor id from address and user agent. Most come once; about
//!   a third return on other days with the same address and browser. (All
//!   events are sent now, under today's salt, so such a visitor keeps one
//!   visitor id across the period; live traffic would get a new id each day.)
//!   A visit lands on a page from a channel (direct, search, social, email,
//!   referral, a tagged campaign, an ad click id), views pages with
//!   log-normal gaps (a few over 30 minutes, which split the visit at
//!   ingest), and sometimes scrolls, signs up, buys, downloads, searches or
//!   clicks out. The www and blog hosts are multi-page sites (the next page's
//!   referrer is the previous page); the docs host is a single-page app (the
//!   referrer stays the landing's).
//! - **app**: a mobile app (screen views, `add_to_cart`, purchases) with a
//!   stable anonymous id and a client session id per visit, returning on
//!   several days; some are signed in (an identify event, then `user_id`).
//! - **bot**: crawlers with their user agents, from data-centre addresses.
//! - **backend**: a billing service reporting `invoice_paid` with revenue
//!   for a user id, without user agent or address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tally_proto::v1;

use super::rng::{Rng, Weighted};
use super::tables::{self, Channel, Device, PLACES};

/// Milliseconds in a minute, an hour, a day.
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Relative activity by local hour of the day.
const DIURNAL: [f64; 24] = [
    0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.25, 0.45, 0.7, 0.9, 1.0, 1.0, 0.95, 0.95, 1.0, 1.0, 0.95, 0.9, 0.85,
    0.85, 0.8, 0.7, 0.55, 0.4,
];

/// What to generate.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Seed of the random stream.
    pub seed: u64,
    /// Number of events.
    pub events: usize,
    /// Days the events spread over, ending at `end_ms`.
    pub days: u32,
    /// End of the period (exclusive), milliseconds since the epoch.
    pub end_ms: i64,
    /// The site's domain; pages live on www., blog. and docs. below it.
    pub domain: String,
}

/// Hosts of the site, below its domain.
const HOSTS: [&str; 3] = ["www", "blog", "docs"];
const WWW: u8 = 0;
const BLOG: u8 = 1;
const DOCS: u8 = 2;

struct Page {
    host: u8,
    path: String,
}

/// Pages every visit may pass through on its way to a sign-up or purchase.
struct Landmarks {
    home: u16,
    pricing: u16,
    signup: u16,
    checkout: u16,
}

/// Everything drawn once: pages and their popularity, user agents, the
/// distributions of places, referrers and campaigns.
struct World {
    domain: String,
    pages: Vec<Page>,
    popular: Weighted,
    by_host: [(Vec<u16>, Weighted); 3],
    landmarks: Landmarks,
    agents: Vec<(String, Device)>,
    agent_weights: Weighted,
    places: Weighted,
    channels: Weighted,
    search: Weighted,
    social: Weighted,
    email: Weighted,
    referrals: Weighted,
    tail_blogs: Weighted,
    campaigns: Weighted,
    screens: Weighted,
    app_devices: Weighted,
    plans: Weighted,
    kinds: Weighted,
}

const TAIL_BLOGS: usize = 80;
const TAIL_SUFFIXES: [&str; 4] = ["-weekly", "-notes", "-digest", "-lab"];

fn weights<T>(items: &[(T, f64)]) -> Weighted {
    Weighted::new(items.iter().map(|(_, w)| *w))
}

impl World {
    fn build(rng: &mut Rng, domain: &str) -> Self {
        let mut www: Vec<String> = [
            "/features",
            "/about",
            "/contact",
            "/login",
            "/customers",
            "/integrations",
            "/careers",
            "/changelog",
            "/legal/privacy",
            "/legal/terms",
            "/features/realtime",
            "/features/funnels",
            "/features/privacy",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for name in [
            "slack",
            "shopify",
            "wordpress",
            "ghost",
            "hugo",
            "nextjs",
            "django",
            "rails",
        ] {
            www.push(format!("/integrations/{name}"));
        }
        for name in ["acme", "globex", "initech", "umbrella", "hooli", "vandelay"] {
            www.push(format!("/customers/{name}"));
        }
        let mut blog = Vec::new();
        for (i, topic) in tables::TOPICS.iter().enumerate() {
            for (j, shape) in ["why-{}-matters", "{}-in-practice", "a-guide-to-{}", "{}-at-scale"]
                .iter()
                .enumerate()
            {
                if (i + j) % 3 != 2 {
                    blog.push(format!("/posts/{}", shape.replace("{}", topic)));
                }
            }
        }
        let mut docs = vec!["/getting-started".to_string(), "/install".to_string()];
        for topic in tables::TOPICS {
            docs.push(format!("/guide/{topic}"));
        }
        for method in [
            "track",
            "track-stream",
            "run-report",
            "run-funnel-report",
            "export-events",
        ] {
            docs.push(format!("/api/{method}"));
        }
        for lang in ["rust", "kotlin", "swift", "web"] {
            docs.push(format!("/sdk/{lang}"));
        }

        // The head of the popularity ranking is fixed; the long tail is
        // shuffled by the seed.
        let mut pages = vec![
            Page {
                host: WWW,
                path: "/".into(),
            },
            Page {
                host: WWW,
                path: "/pricing".into(),
            },
            Page {
                host: DOCS,
                path: "/".into(),
            },
            Page {
                host: BLOG,
                path: "/".into(),
            },
            Page {
                host: WWW,
                path: "/signup".into(),
            },
            Page {
                host: DOCS,
                path: "/getting-started".into(),
            },
            Page {
                host: WWW,
                path: "/checkout".into(),
            },
        ];
        let mut tail: Vec<Page> = www
            .into_iter()
            .map(|path| Page { host: WWW, path })
            .chain(blog.into_iter().map(|path| Page { host: BLOG, path }))
            .chain(
                docs.into_iter()
                    .filter(|p| p != "/getting-started")
                    .map(|path| Page { host: DOCS, path }),
            )
            .collect();
        for i in (1..tail.len()).rev() {
            tail.swap(i, rng.below(i + 1));
        }
        pages.extend(tail);
        let popular = Weighted::zipf(pages.len(), 1.05);
        let by_host = [WWW, BLOG, DOCS].map(|host| {
            let ids: Vec<u16> = (0..pages.len() as u16)
                .filter(|i| pages[*i as usize].host == host)
                .collect();
            let weights = Weighted::zipf(ids.len(), 1.1);
            (ids, weights)
        });
        let find = |host: u8, path: &str| {
            pages
                .iter()
                .position(|p| p.host == host && p.path == path)
                .expect("landmark page exists") as u16
        };
        let landmarks = Landmarks {
            home: find(WWW, "/"),
            pricing: find(WWW, "/pricing"),
            signup: find(WWW, "/signup"),
            checkout: find(WWW, "/checkout"),
        };

        let mut agents = Vec::new();
        let mut agent_weights = Vec::new();
        for browser in tables::BROWSERS {
            let version_weights: Vec<f64> = (1..=browser.versions.len())
                .map(|r| 1.0 / (r as f64).powf(1.3))
                .collect();
            let sum: f64 = version_weights.iter().sum();
            for (version, w) in browser.versions.iter().zip(version_weights) {
                agents.push((browser.template.replace("{v}", version), browser.device));
                agent_weights.push(browser.weight * w / sum);
            }
        }

        Self {
            domain: domain.to_owned(),
            pages,
            popular,
            by_host,
            landmarks,
            agents,
            agent_weights: Weighted::new(agent_weights),
            places: Weighted::new(PLACES.iter().map(|p| p.weight)),
            channels: weights(tables::CHANNELS),
            search: weights(tables::SEARCH),
            social: weights(tables::SOCIAL),
            email: weights(tables::EMAIL),
            referrals: weights(tables::REFERRALS),
            tail_blogs: Weighted::zipf(TAIL_BLOGS, 1.0),
            campaigns: Weighted::new(tables::CAMPAIGNS.iter().map(|c| c.6)),
            screens: Weighted::zipf(tables::SCREENS.len(), 0.9),
            app_devices: Weighted::new(tables::APP_DEVICES.iter().map(|d| d.weight)),
            plans: Weighted::new(tables::PLANS.iter().map(|p| p.1)),
            kinds: Weighted::new(KINDS.iter().map(|k| k.1)),
        }
    }

    fn host(&self, host: u8) -> String {
        format!("{}.{}", HOSTS[host as usize], self.domain)
    }

    fn page_url(&self, page: u16) -> String {
        let p = &self.pages[page as usize];
        format!("https://{}{}", self.host(p.host), p.path)
    }

    /// The page after `page` in a visit.
    fn next_page(&self, rng: &mut Rng, page: u16) -> u16 {
        let l = &self.landmarks;
        if page == l.pricing && rng.chance(0.35) {
            return l.signup;
        }
        if page == l.signup && rng.chance(0.3) {
            return l.checkout;
        }
        loop {
            let next = if rng.chance(0.7) {
                let (ids, weights) = &self.by_host[self.pages[page as usize].host as usize];
                ids[weights.sample(rng)]
            } else {
                self.popular.sample(rng) as u16
            };
            if next != page {
                return next;
            }
        }
    }
}

/// Kinds of visitors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Web,
    App,
    Bot,
    Backend,
}

/// Shares of new visitors by kind, chosen so that about 85% of the events
/// are web events, 9% app events, 4% bot events and 0.5% backend events.
const KINDS: [(Kind, f64); 4] = [
    (Kind::Web, 95.2),
    (Kind::App, 2.35),
    (Kind::Bot, 0.47),
    (Kind::Backend, 1.76),
];

/// A visitor, as the events need it.
struct Visitor {
    kind: Kind,
    /// Index into `PLACES` (or `BOT_PLACES` for bots).
    place: u8,
    ip: IpAddr,
    /// Index into the world's user agents (or `BOT_AGENTS` for bots); app device for apps.
    agent: u16,
    /// OS version index (apps).
    os_version: u8,
    /// Days an app user waits before updating.
    upgrade_lag: u8,
    /// Anonymous id (apps).
    anon: u64,
    /// User id number; 0 for none.
    user: u32,
}

/// Where a page view came from.
#[derive(Clone, Copy, Debug)]
enum Referrer {
    None,
    External(&'static str),
    /// One of the long tail of blogs.
    Tail(u8),
    /// The site's own page (multi-page navigation).
    Page(u16),
}

/// Tracking parameters of a landing URL.
#[derive(Clone, Copy, Debug)]
enum Tag {
    None,
    Campaign(u8),
    Click(u32),
}

/// A custom event and its values.
#[derive(Clone, Copy, Debug)]
enum Custom {
    Signup {
        plan: u8,
        seats: u16,
        newsletter: bool,
    },
    Purchase {
        plan: u8,
        seats: u16,
        euro: bool,
    },
    Outbound {
        target: u8,
    },
    Download {
        file: u8,
    },
    Search {
        query: u8,
        results: u8,
    },
    /// A non-interaction event: does not save a visit from bouncing.
    Autoplay,
    AddToCart {
        sku: u16,
        cents: u32,
    },
    Invoice {
        plan: u8,
        euro: bool,
    },
}

/// What an event is.
#[derive(Clone, Copy, Debug)]
enum Body {
    View {
        page: u16,
        referrer: Referrer,
        tag: Tag,
    },
    Screen {
        screen: u8,
        session_start: bool,
    },
    Scroll {
        page: u16,
        tag: Tag,
        depth: u8,
    },
    /// A custom event on a web page (with the page's tag when on the landing) or in the app.
    Custom {
        page: Option<u16>,
        tag: Tag,
        screen: u8,
        custom: Custom,
    },
    Identify,
}

/// One planned event.
pub struct Planned {
    /// Timestamp, milliseconds since the epoch.
    pub ts_ms: i64,
    id_bits: [u8; 10],
    visitor: u32,
    visit: u16,
    body: Body,
}

/// The planned data set.
pub struct Plan {
    world: World,
    visitors: Vec<Visitor>,
    /// The events, by time.
    pub events: Vec<Planned>,
    /// The period's start, milliseconds.
    pub start_ms: i64,
    /// The period's end, milliseconds.
    pub end_ms: i64,
}

/// Adds the events of visitors one after another until there are `events`.
struct Planner<'a> {
    rng: Rng,
    world: &'a World,
    start_ms: i64,
    end_ms: i64,
    days: i64,
    events: Vec<Planned>,
    visitors: Vec<Visitor>,
}

impl Planner<'_> {
    fn push(&mut self, ts_ms: i64, visit: u16, body: Body) {
        if ts_ms >= self.end_ms {
            return;
        }
        let id_bits = self.rng.bytes();
        self.events.push(Planned {
            ts_ms,
            id_bits,
            visitor: (self.visitors.len() - 1) as u32,
            visit,
            body,
        });
    }

    /// `k` distinct days of the period, in order.
    fn days(&mut self, k: u32) -> Vec<i64> {
        let k = (k as i64).min(self.days);
        let mut days: Vec<i64> = Vec::with_capacity(k as usize);
        while (days.len() as i64) < k {
            let day = self.rng.range(0, self.days);
            if !days.contains(&day) {
                days.push(day);
            }
        }
        days.sort_unstable();
        days
    }

    /// When a visit on `day` starts: more by day than by night (local time),
    /// fewer at weekends, slowly growing over the period.
    fn visit_start(&mut self, day: i64, utc_offset: i64) -> i64 {
        loop {
            let t = self.start_ms + day * DAY + self.rng.range(0, DAY);
            let local_hour = ((t / HOUR + utc_offset).rem_euclid(24)) as usize;
            // 1970-01-01 was a Thursday: Monday is 0.
            let weekday = (t.div_euclid(DAY) + 3).rem_euclid(7);
            let weekend = if weekday >= 5 { 0.7 } else { 1.0 };
            let growth = 0.85 + 0.3 * day as f64 / self.days as f64;
            if self.rng.unit() * 1.3 < DIURNAL[local_hour] * weekend * growth {
                return t;
            }
        }
    }

    fn address(&mut self, place: &tables::Place, v6: bool) -> IpAddr {
        if v6 {
            let r: [u16; 3] = [
                self.rng.next_u64() as u16,
                self.rng.next_u64() as u16,
                self.rng.next_u64() as u16 | 1,
            ];
            IpAddr::V6(Ipv6Addr::new(0x2a05, place.v6, r[0], r[1], 0, 0, 0, r[2]))
        } else {
            let [a, b] = place.v4;
            IpAddr::V4(Ipv4Addr::new(
                a,
                b,
                self.rng.below(256) as u8,
                1 + self.rng.below(254) as u8,
            ))
        }
    }

    fn add_visitor(&mut self) {
        let kind = KINDS[self.world.kinds.sample(&mut self.rng)].0;
        let n = self.visitors.len() as u32 + 1;
        let visitor = match kind {
            Kind::Web | Kind::App => {
                let place = self.world.places.sample(&mut self.rng);
                let v6 = self.rng.chance(0.08);
                let ip = self.address(&PLACES[place], v6);
                let agent = match kind {
                    Kind::Web => self.world.agent_weights.sample(&mut self.rng),
                    _ => self.world.app_devices.sample(&mut self.rng),
                } as u16;
                let signed_in = kind == Kind::App && self.rng.chance(0.25);
                Visitor {
                    kind,
                    place: place as u8,
                    ip,
                    agent,
                    os_version: self.rng.below(3) as u8,
                    upgrade_lag: self.rng.below(8) as u8,
                    anon: self.rng.next_u64(),
                    user: if signed_in { n } else { 0 },
                }
            }
            Kind::Bot => {
                let place = self.rng.below(tables::BOT_PLACES.len());
                let ip = self.address(&tables::BOT_PLACES[place], false);
                Visitor {
                    kind,
                    place: place as u8,
                    ip,
                    agent: self.rng.below(tables::BOT_AGENTS.len()) as u16,
                    os_version: 0,
                    upgrade_lag: 0,
                    anon: 0,
                    user: 0,
                }
            }
            Kind::Backend => Visitor {
                kind,
                place: 0,
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                agent: 0,
                os_version: 0,
                upgrade_lag: 0,
                anon: 0,
                user: n,
            },
        };
        self.visitors.push(visitor);
        match kind {
            Kind::Web => self.web_visitor(),
            Kind::App => self.app_visitor(),
            Kind::Bot => self.bot_visitor(),
            Kind::Backend => self.backend_visitor(),
        }
    }

    fn current(&self) -> &Visitor {
        self.visitors.last().expect("a visitor was added")
    }

    fn web_visitor(&mut self) {
        let visits = if self.rng.chance(0.3) {
            1 + self.rng.count(2.5)
        } else {
            1
        };
        let offset = PLACES[self.current().place as usize].utc_offset;
        for (i, day) in self.days(visits).into_iter().enumerate() {
            let start = self.visit_start(day, offset);
            self.web_visit(i as u16, start);
        }
    }

    /// The referrer and tag a visit lands with.
    fn landing(&mut self) -> (Referrer, Tag) {
        let world = self.world;
        let channel = tables::CHANNELS[world.channels.sample(&mut self.rng)].0;
        let pick = |rng: &mut Rng, w: &Weighted, items: &[(&'static str, f64)]| {
            Referrer::External(items[w.sample(rng)].0)
        };
        match channel {
            Channel::Direct => (Referrer::None, Tag::None),
            Channel::Search => (pick(&mut self.rng, &world.search, tables::SEARCH), Tag::None),
            Channel::Social => (pick(&mut self.rng, &world.social, tables::SOCIAL), Tag::None),
            Channel::Email => (pick(&mut self.rng, &world.email, tables::EMAIL), Tag::None),
            Channel::Referral => {
                if self.rng.chance(0.45) {
                    (
                        Referrer::Tail(world.tail_blogs.sample(&mut self.rng) as u8),
                        Tag::None,
                    )
                } else {
                    (
                        pick(&mut self.rng, &world.referrals, tables::REFERRALS),
                        Tag::None,
                    )
                }
            }
            Channel::Campaign => {
                let c = world.campaigns.sample(&mut self.rng);
                let referrer = match tables::CAMPAIGNS[c].5 {
                    "" => Referrer::None,
                    r => Referrer::External(r),
                };
                (referrer, Tag::Campaign(c as u8))
            }
            Channel::ClickId => (
                Referrer::External("https://www.google.com/"),
                Tag::Click(self.rng.next_u64() as u32),
            ),
        }
    }

    fn web_visit(&mut self, visit: u16, start: i64) {
        let world = self.world;
        let device = world.agents[self.current().agent as usize].1;
        let euro = PLACES[self.current().place as usize].euro;
        let (referrer, tag) = self.landing();
        let landing = match tag {
            Tag::Campaign(_) if self.rng.chance(0.5) => {
                if self.rng.chance(0.5) {
                    world.landmarks.home
                } else {
                    world.landmarks.pricing
                }
            }
            _ => world.popular.sample(&mut self.rng) as u16,
        };
        let (bounce, mean) = match device {
            Device::Desktop => (0.4, 3.5),
            Device::Tablet => (0.45, 3.0),
            Device::Mobile | Device::Living => (0.5, 2.5),
        };
        let views = if self.rng.chance(bounce) {
            1
        } else {
            1 + self.rng.count(mean)
        };
        let mut t = start;
        let mut page = landing;
        for i in 0..views {
            let this_tag = if i == 0 { tag } else { Tag::None };
            if i > 0 {
                let previous = page;
                page = world.next_page(&mut self.rng, previous);
                let spa =
                    world.pages[previous as usize].host == DOCS && world.pages[page as usize].host == DOCS;
                let this_referrer = if spa { referrer } else { Referrer::Page(previous) };
                self.push(
                    t,
                    visit,
                    Body::View {
                        page,
                        referrer: this_referrer,
                        tag: this_tag,
                    },
                );
            } else {
                self.push(
                    t,
                    visit,
                    Body::View {
                        page,
                        referrer,
                        tag: this_tag,
                    },
                );
            }
            let gap = if i + 1 == views {
                self.rng.lognormal(30_000.0, 1.0).clamp(1_000.0, 600_000.0) as i64
            } else if self.rng.chance(0.035) {
                self.rng.range(31 * MINUTE, 150 * MINUTE)
            } else {
                self.rng
                    .lognormal(40_000.0, 1.0)
                    .clamp(2_000.0, 25.0 * MINUTE as f64) as i64
            };
            let extras = self.page_extras(page, euro);
            let slots = extras.len() as i64 + 1;
            for (k, body) in extras.into_iter().enumerate() {
                let at = t + gap * (k as i64 + 1) / (slots + 1);
                let body = match body {
                    Body::Custom {
                        page, custom, screen, ..
                    } => Body::Custom {
                        page,
                        tag: this_tag,
                        screen,
                        custom,
                    },
                    Body::Scroll { page, depth, .. } => Body::Scroll {
                        page,
                        tag: this_tag,
                        depth,
                    },
                    other => other,
                };
                self.push(at, visit, body);
            }
            t += gap;
        }
    }

    /// Events on a web page besides its view, in order.
    fn page_extras(&mut self, page: u16, euro: bool) -> Vec<Body> {
        let world = self.world;
        let l = &world.landmarks;
        let mut extras = Vec::new();
        let custom = |custom| Body::Custom {
            page: Some(page),
            tag: Tag::None,
            screen: 0,
            custom,
        };
        if self.rng.chance(0.12) {
            let depth = [25, 50, 75, 100][self.rng.below(4)];
            extras.push(Body::Scroll {
                page,
                tag: Tag::None,
                depth,
            });
        }
        let p = &world.pages[page as usize];
        if page == l.home && self.rng.chance(0.03) {
            extras.push(custom(Custom::Autoplay));
        }
        if page == l.signup && self.rng.chance(0.45) {
            let plan = world.plans.sample(&mut self.rng) as u8;
            let seats = match plan {
                0 => 1,
                1 => 1 + self.rng.below(5) as u16,
                _ => 3 + self.rng.below(48) as u16,
            };
            extras.push(custom(Custom::Signup {
                plan,
                seats,
                newsletter: self.rng.chance(0.4),
            }));
            if self.rng.chance(0.5) {
                extras.push(Body::Identify);
            }
        }
        if page == l.checkout && self.rng.chance(0.4) {
            let plan = 1 + self.rng.below(2) as u8;
            let seats = 1 + self.rng.below(if plan == 1 { 5 } else { 40 }) as u16;
            extras.push(custom(Custom::Purchase { plan, seats, euro }));
        }
        if p.host == BLOG && p.path != "/" && self.rng.chance(0.06) {
            extras.push(custom(Custom::Outbound {
                target: self.rng.below(tables::OUTBOUND.len()) as u8,
            }));
        }
        if p.host == DOCS {
            if self.rng.chance(0.03) {
                extras.push(custom(Custom::Download {
                    file: self.rng.below(tables::DOWNLOADS.len()) as u8,
                }));
            }
            if self.rng.chance(0.05) {
                let query = self.rng.below(tables::SEARCHES.len()) as u8;
                extras.push(custom(Custom::Search {
                    query,
                    results: self.rng.below(21) as u8,
                }));
            }
        }
        extras
    }

    fn app_visitor(&mut self) {
        let visits = 1 + self.rng.count(4.0);
        let offset = PLACES[self.current().place as usize].utc_offset;
        let signed_in = self.current().user != 0;
        for (i, day) in self.days(visits).into_iter().enumerate() {
            let start = self.visit_start(day, offset);
            let visit = i as u16;
            let mut t = start;
            if signed_in && i == 0 {
                self.push(t, visit, Body::Identify);
                t += self.rng.range(500, 3_000);
            }
            let screens = 1 + self.rng.count(4.0);
            for k in 0..screens {
                let screen = match k {
                    0 if self.rng.chance(0.8) => 0,
                    _ => self.world.screens.sample(&mut self.rng) as u8,
                };
                self.push(
                    t,
                    visit,
                    Body::Screen {
                        screen,
                        session_start: k == 0,
                    },
                );
                let gap = self.rng.lognormal(20_000.0, 0.8).clamp(2_000.0, 600_000.0) as i64;
                let name = tables::SCREENS[screen as usize];
                let custom = if name == "Product" && self.rng.chance(0.15) {
                    let cents = 499 + 100 * self.rng.below(60) as u32;
                    Some(Custom::AddToCart {
                        sku: self.rng.below(500) as u16,
                        cents,
                    })
                } else if name == "Checkout" && self.rng.chance(0.3) {
                    let plan = 1 + self.rng.below(2) as u8;
                    let euro = PLACES[self.current().place as usize].euro;
                    Some(Custom::Purchase {
                        plan,
                        seats: 1 + self.rng.below(3) as u16,
                        euro,
                    })
                } else {
                    None
                };
                if let Some(custom) = custom {
                    self.push(
                        t + gap / 2,
                        visit,
                        Body::Custom {
                            page: None,
                            tag: Tag::None,
                            screen,
                            custom,
                        },
                    );
                }
                t += gap;
            }
        }
    }

    fn bot_visitor(&mut self) {
        let visits = 1 + self.rng.count(2.0);
        let pages = self.world.pages.len();
        for (i, day) in self.days(visits).into_iter().enumerate() {
            let mut t = self.start_ms + day * DAY + self.rng.range(0, DAY);
            for _ in 0..(4 + self.rng.count(15.0)) {
                let page = self.rng.below(pages) as u16;
                self.push(
                    t,
                    i as u16,
                    Body::View {
                        page,
                        referrer: Referrer::None,
                        tag: Tag::None,
                    },
                );
                t += self.rng.range(1_000, 15_000);
            }
        }
    }

    fn backend_visitor(&mut self) {
        let invoices = self.rng.count(1.5);
        let plan = 1 + self.rng.below(2) as u8;
        let euro = self.rng.chance(0.3);
        for (i, day) in self.days(invoices).into_iter().enumerate() {
            let t = self.start_ms + day * DAY + self.rng.range(0, DAY);
            let body = Body::Custom {
                page: None,
                tag: Tag::None,
                screen: 0,
                custom: Custom::Invoice { plan, euro },
            };
            self.push(t, i as u16, body);
        }
    }
}

/// Plans the data set of `settings`.
pub fn plan(settings: &Settings) -> Plan {
    let mut rng = Rng::new(settings.seed);
    let world = World::build(&mut rng, &settings.domain);
    let start_ms = settings.end_ms - i64::from(settings.days) * DAY;
    let mut planner = Planner {
        rng,
        world: &world,
        start_ms,
        end_ms: settings.end_ms,
        days: i64::from(settings.days.max(1)),
        events: Vec::with_capacity(settings.events + 1000),
        visitors: Vec::new(),
    };
    while planner.events.len() < settings.events {
        planner.add_visitor();
    }
    let Planner {
        mut events, visitors, ..
    } = planner;
    events.truncate(settings.events);
    // A stable sort: events at the same millisecond keep the order they were drawn in.
    events.sort_by_key(|e| e.ts_ms);
    Plan {
        world,
        visitors,
        events,
        start_ms,
        end_ms: settings.end_ms,
    }
}

fn string(value: impl Into<String>) -> v1::PropertyValue {
    v1::PropertyValue {
        value: Some(v1::property_value::Value::StringValue(value.into())),
    }
}

fn number(value: f64) -> v1::PropertyValue {
    v1::PropertyValue {
        value: Some(v1::property_value::Value::NumberValue(value)),
    }
}

fn boolean(value: bool) -> v1::PropertyValue {
    v1::PropertyValue {
        value: Some(v1::property_value::Value::BoolValue(value)),
    }
}

fn money(cents: u64, euro: bool) -> v1::Money {
    v1::Money {
        currency_code: if euro { "EUR" } else { "USD" }.into(),
        units: (cents / 100) as i64,
        nanos: (cents % 100) as i32 * 10_000_000,
    }
}

/// The query string of a tagged landing URL, with '?'.
fn tag_query(tag: Tag) -> String {
    match tag {
        Tag::None => String::new(),
        Tag::Click(n) => format!("?gclid=Cj0KCQjw{n:08x}"),
        Tag::Campaign(c) => {
            let (source, medium, campaign, term, content, ..) = tables::CAMPAIGNS[c as usize];
            let mut query = String::new();
            for (key, value) in [
                ("utm_source", source),
                ("utm_medium", medium),
                ("utm_campaign", campaign),
                ("utm_term", term),
                ("utm_content", content),
            ] {
                if !value.is_empty() {
                    query.push(if query.is_empty() { '?' } else { '&' });
                    query.push_str(&format!("{key}={}", value.replace(' ', "+")));
                }
            }
            query
        }
    }
}

impl Plan {
    /// The number of visitors drawn.
    pub fn visitors(&self) -> usize {
        self.visitors.len()
    }

    /// The event to send for `p`.
    pub fn event(&self, p: &Planned) -> v1::Event {
        let world = &self.world;
        let visitor = &self.visitors[p.visitor as usize];
        let id = uuid::Builder::from_unix_timestamp_millis(p.ts_ms as u64, &p.id_bits).into_uuid();
        let mut e = v1::Event {
            event_id: id.hyphenated().to_string(),
            timestamp: Some(prost_types::Timestamp {
                seconds: p.ts_ms.div_euclid(1000),
                nanos: (p.ts_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            ..Default::default()
        };
        let page_url = |page: u16, tag: Tag| format!("{}{}", world.page_url(page), tag_query(tag));
        match p.body {
            Body::View { page, referrer, tag } => {
                e.set_type(v1::EventType::Pageview);
                e.url = page_url(page, tag);
                e.referrer = match referrer {
                    Referrer::None => String::new(),
                    Referrer::External(r) => r.to_owned(),
                    Referrer::Tail(i) => {
                        let topic = tables::TOPICS[i as usize % tables::TOPICS.len()];
                        let suffix = TAIL_SUFFIXES[i as usize / tables::TOPICS.len() % TAIL_SUFFIXES.len()];
                        format!("https://{topic}{suffix}.example/2026/{topic}-tools")
                    }
                    Referrer::Page(page) => world.page_url(page),
                };
            }
            Body::Screen {
                screen,
                session_start,
            } => {
                e.set_type(v1::EventType::ScreenView);
                e.screen = tables::SCREENS[screen as usize].to_owned();
                e.session = Some(v1::SessionHint {
                    session_id: String::new(),
                    session_start,
                });
            }
            Body::Scroll { page, tag, depth } => {
                e.set_type(v1::EventType::Engagement);
                e.name = "scroll".into();
                e.url = page_url(page, tag);
                e.properties.insert("depth".into(), number(f64::from(depth)));
            }
            Body::Custom {
                page,
                tag,
                screen,
                custom,
            } => {
                e.set_type(v1::EventType::Custom);
                if let Some(page) = page {
                    e.url = page_url(page, tag);
                }
                let props = &mut e.properties;
                match custom {
                    Custom::Signup {
                        plan,
                        seats,
                        newsletter,
                    } => {
                        e.name = "signup".into();
                        props.insert("plan".into(), string(tables::PLANS[plan as usize].0));
                        props.insert("seats".into(), number(f64::from(seats)));
                        props.insert("newsletter".into(), boolean(newsletter));
                    }
                    Custom::Purchase { plan, seats, euro } => {
                        e.name = "purchase".into();
                        let (name, _, usd, eur) = tables::PLANS[plan as usize];
                        props.insert("plan".into(), string(name));
                        props.insert("seats".into(), number(f64::from(seats)));
                        let price = if euro { eur } else { usd };
                        e.revenue = Some(money(u64::from(price) * u64::from(seats), euro));
                    }
                    Custom::Outbound { target } => {
                        e.name = "outbound_click".into();
                        props.insert("target".into(), string(tables::OUTBOUND[target as usize]));
                    }
                    Custom::Download { file } => {
                        e.name = "download".into();
                        let (name, size) = tables::DOWNLOADS[file as usize];
                        props.insert("file".into(), string(name));
                        props.insert("size_mb".into(), number(size));
                    }
                    Custom::Search { query, results } => {
                        e.name = "search".into();
                        props.insert("query".into(), string(tables::SEARCHES[query as usize]));
                        props.insert("results".into(), number(f64::from(results)));
                    }
                    Custom::Autoplay => {
                        e.name = "video_autoplay".into();
                        e.non_interaction = true;
                        props.insert("muted".into(), boolean(true));
                    }
                    Custom::AddToCart { sku, cents } => {
                        e.name = "add_to_cart".into();
                        props.insert("sku".into(), string(format!("sku-{sku:03}")));
                        props.insert("price".into(), number(f64::from(cents) / 100.0));
                        props.insert("screen".into(), string(tables::SCREENS[screen as usize]));
                    }
                    Custom::Invoice { plan, euro } => {
                        e.name = "invoice_paid".into();
                        let (name, _, usd, eur) = tables::PLANS[plan as usize];
                        props.insert("plan".into(), string(name));
                        let price = if euro { eur } else { usd };
                        e.revenue = Some(money(u64::from(price), euro));
                    }
                }
            }
            Body::Identify => {
                e.set_type(v1::EventType::Identify);
            }
        }
        match visitor.kind {
            Kind::Web => {
                let place = &PLACES[visitor.place as usize];
                if matches!(p.body, Body::Identify) {
                    e.user_id = format!("user-{}", p.visitor + 1);
                }
                e.context = Some(v1::Context {
                    sdk_name: "tally-web".into(),
                    sdk_version: "0.1.0".into(),
                    locale: place.locale.into(),
                    user_agent: world.agents[visitor.agent as usize].0.clone(),
                    ip: visitor.ip.to_string(),
                    ..Default::default()
                });
            }
            Kind::App => {
                let place = &PLACES[visitor.place as usize];
                let tables::AppDevice {
                    os,
                    versions,
                    model,
                    maker,
                    tablet,
                    ..
                } = tables::APP_DEVICES[visitor.agent as usize];
                let day = (p.ts_ms - self.start_ms).div_euclid(DAY) - i64::from(visitor.upgrade_lag);
                let app_version = tables::APP_RELEASES
                    .iter()
                    .rev()
                    .find(|(_, released)| *released <= day)
                    .map_or("4.0.3", |(v, _)| v);
                e.anonymous_id = format!("app-{:016x}", visitor.anon);
                if visitor.user != 0 {
                    e.user_id = format!("user-{}", visitor.user);
                }
                if let Some(session) = &mut e.session {
                    session.session_id = format!("{:016x}-{}", visitor.anon, p.visit);
                } else if !matches!(p.body, Body::Identify) {
                    e.session = Some(v1::SessionHint {
                        session_id: format!("{:016x}-{}", visitor.anon, p.visit),
                        session_start: false,
                    });
                }
                let device_type = if tablet {
                    v1::DeviceType::Tablet
                } else {
                    v1::DeviceType::Mobile
                };
                e.context = Some(v1::Context {
                    sdk_name: if os == "iOS" {
                        "tally-swift"
                    } else {
                        "tally-kotlin"
                    }
                    .into(),
                    sdk_version: "1.2.0".into(),
                    app_version: app_version.into(),
                    locale: place.locale.into(),
                    os_name: os.into(),
                    os_version: versions[visitor.os_version as usize % versions.len()].into(),
                    device_model: model.into(),
                    device_manufacturer: maker.into(),
                    device_type: device_type as i32,
                    ip: visitor.ip.to_string(),
                    ..Default::default()
                });
            }
            Kind::Bot => {
                e.context = Some(v1::Context {
                    user_agent: tables::BOT_AGENTS[visitor.agent as usize].into(),
                    ip: visitor.ip.to_string(),
                    ..Default::default()
                });
            }
            Kind::Backend => {
                e.user_id = format!("user-{}", visitor.user);
                e.context = Some(v1::Context {
                    sdk_name: "tally-rust".into(),
                    sdk_version: "0.1.0".into(),
                    ..Default::default()
                });
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(seed: u64, events: usize) -> Settings {
        Settings {
            seed,
            events,
            days: 28,
            end_ms: 1_780_000_000_000,
            domain: "shop.example".into(),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let a = plan(&settings(3, 5_000));
        let b = plan(&settings(3, 5_000));
        let c = plan(&settings(4, 5_000));
        let all = |p: &Plan| p.events.iter().map(|e| p.event(e)).collect::<Vec<_>>();
        assert_eq!(all(&a), all(&b));
        assert_ne!(all(&a), all(&c));
    }

    #[test]
    fn events_are_sorted_within_the_period_with_unique_ids() {
        let p = plan(&settings(5, 20_000));
        assert_eq!(p.events.len(), 20_000);
        assert!(p.events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        assert!(
            p.events
                .iter()
                .all(|e| e.ts_ms >= p.start_ms && e.ts_ms < p.end_ms)
        );
        let ids: std::collections::HashSet<String> = p.events.iter().map(|e| p.event(e).event_id).collect();
        assert_eq!(ids.len(), 20_000);
        let id = uuid::Uuid::parse_str(&p.event(&p.events[0]).event_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn the_mix_is_realistic() {
        let p = plan(&settings(6, 50_000));
        let events: Vec<v1::Event> = p.events.iter().map(|e| p.event(e)).collect();
        let share = |f: &dyn Fn(&v1::Event) -> bool| events.iter().filter(|e| f(e)).count() as f64 / 50_000.0;
        let pageviews = share(&|e| e.r#type() == v1::EventType::Pageview);
        let screens = share(&|e| e.r#type() == v1::EventType::ScreenView);
        let bots = share(&|e| {
            e.context
                .as_ref()
                .is_some_and(|c| c.user_agent.contains("bot") || c.user_agent.contains("Headless"))
        });
        let campaigns = share(&|e| e.url.contains("utm_source="));
        assert!((0.6..0.85).contains(&pageviews), "page views {pageviews}");
        assert!((0.03..0.12).contains(&screens), "screen views {screens}");
        assert!((0.01..0.08).contains(&bots), "bots {bots}");
        assert!(campaigns > 0.005, "campaign landings {campaigns}");
        for name in [
            "signup",
            "purchase",
            "scroll",
            "download",
            "search",
            "add_to_cart",
            "invoice_paid",
        ] {
            assert!(events.iter().any(|e| e.name == name), "no {name} event");
        }
    }
}
