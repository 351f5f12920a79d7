//! Traffic source: where a visit came from, as a source (e.g. "Google",
//! "news.ycombinator.com", a campaign's `utm_source`) and a medium, one of
//! `organic`, `social`, `email`, `referral`, `paid`, `direct`, `internal`.
//!
//! In order of precedence:
//! 1. `utm_*` parameters of the page URL (the medium from `utm_medium`, or a
//!    click id, or the referrer);
//! 2. an ad click id (`gclid`, `fbclid`, `msclkid`, ...): medium `paid`;
//! 3. a referrer from one of the site's own domains: medium `internal`;
//! 4. a known referrer (`server/data/referrers.toml`): its name and medium;
//! 5. any other referrer: its host, medium `referral`;
//! 6. nothing: source "Direct", medium `direct`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use super::{Draft, Outcome, Stage};

/// The referrer list, compiled into the binary.
const REFERRERS: &str = include_str!("../../data/referrers.toml");

/// Source of events without referrer or campaign.
pub const DIRECT: &str = "Direct";

/// Configuration of the source stage.
#[derive(Clone, Debug, Default)]
pub struct SourceConfig {}

impl SourceConfig {
    /// The runtime stage.
    pub fn build(&self) -> SourceStage {
        SourceStage {
            referrers: Referrers::shared(),
        }
    }
}

/// Where a visit came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Source name.
    pub source: String,
    /// Medium class.
    pub medium: &'static str,
    /// `utm_campaign`.
    pub campaign: String,
    /// `utm_source` as sent.
    pub utm_source: String,
    /// `utm_medium` as sent.
    pub utm_medium: String,
    /// `utm_term`.
    pub utm_term: String,
    /// `utm_content`.
    pub utm_content: String,
}

/// The mediums a source can have.
const MEDIUMS: [&str; 7] = [
    "organic", "social", "email", "referral", "paid", "direct", "internal",
];

/// Source and medium by host or name, with a fast hash (the keys are public data).
type Map = HashMap<String, (Arc<str>, &'static str), foldhash::fast::RandomState>;

/// The known referrers.
pub struct Referrers {
    /// Host (or Android package) -> (source, medium).
    exact: Map,
    /// Name before any top-level domain ("google" of "google.*") -> (source, medium).
    any_tld: Map,
    /// Lower-case source name -> (source, medium).
    names: Map,
}

static SHARED: LazyLock<Arc<Referrers>> = LazyLock::new(|| {
    let sections: BTreeMap<String, BTreeMap<String, Vec<String>>> =
        toml::from_str(REFERRERS).expect("the embedded referrers.toml is valid");
    let mut referrers = Referrers {
        exact: Map::default(),
        any_tld: Map::default(),
        names: Map::default(),
    };
    for (medium, sources) in sections {
        let medium = MEDIUMS
            .into_iter()
            .find(|m| *m == medium)
            .unwrap_or_else(|| panic!("referrers.toml: unknown medium [{medium}]"));
        for (name, hosts) in sources {
            let name: Arc<str> = name.into();
            referrers
                .names
                .insert(name.to_lowercase(), (name.clone(), medium));
            for host in hosts {
                let entry = (name.clone(), medium);
                match host.strip_suffix(".*") {
                    Some(label) => referrers.any_tld.insert(label.to_owned(), entry),
                    None => referrers.exact.insert(host, entry),
                };
            }
        }
    }
    Arc::new(referrers)
});

impl Referrers {
    /// The process-wide list.
    pub fn shared() -> Arc<Referrers> {
        SHARED.clone()
    }

    /// The known source of a host: the host itself, then its parent domains.
    fn lookup(&self, host: &str) -> Option<(Arc<str>, &'static str)> {
        let mut candidate = host;
        loop {
            if let Some(hit) = self.exact.get(candidate) {
                return Some(hit.clone());
            }
            if let Some((label, tld)) = candidate.split_once('.')
                && is_public_suffix_like(tld)
                && let Some(hit) = self.any_tld.get(label)
            {
                return Some(hit.clone());
            }
            candidate = candidate.split_once('.')?.1;
        }
    }

    /// A campaign's `utm_source` under its usual name: "google", "Google",
    /// "google.com" and "fb" give "Google" and "Facebook".
    fn canonical(&self, utm_source: &str) -> Option<(Arc<str>, &'static str)> {
        let lower = utm_source.trim().to_lowercase();
        self.names
            .get(&lower)
            .cloned()
            .or_else(|| self.lookup(&lower))
            .or_else(|| self.lookup(&format!("{lower}.com")))
    }
}

/// "com", "de", "co.uk", "com.br": what may follow a name in "name.*".
fn is_public_suffix_like(rest: &str) -> bool {
    match rest.split_once('.') {
        None => (2..=6).contains(&rest.len()),
        Some((second, tld)) => second.len() <= 3 && tld.len() == 2 && !tld.contains('.'),
    }
}

/// Medium named by a `utm_medium` value, when it is one of the usual ones.
fn utm_medium_class(utm_medium: &str) -> Option<&'static str> {
    let m = utm_medium.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    Some(match m.as_str() {
        "cpc" | "ppc" | "paid" | "paidsearch" | "paid_search" | "paid_social" | "paidsocial" | "cpm"
        | "cpv" | "cpa" | "display" | "banner" | "retargeting" | "remarketing" | "ads" | "ad" | "sem" => {
            "paid"
        }
        "email" | "e_mail" | "newsletter" | "mail" => "email",
        "social" | "social_network" | "social_media" | "socialmedia" | "sm" | "organic_social" => "social",
        "organic" | "seo" => "organic",
        "referral" | "affiliate" | "partner" | "link" => "referral",
        _ => return None,
    })
}

/// Ad click ids and the network that appends them.
const CLICK_IDS: [(&str, &str); 8] = [
    ("gclid", "Google"),
    ("gbraid", "Google"),
    ("wbraid", "Google"),
    ("dclid", "Google"),
    ("fbclid", "Facebook"),
    ("msclkid", "Bing"),
    ("ttclid", "TikTok"),
    ("twclid", "X"),
];

/// The host of a referrer URL (validated as an absolute URL at ingest),
/// lower-case, without a leading "www.", or the package of an
/// `android-app://` referrer.
fn referrer_host(referrer: &str) -> Option<String> {
    let (_, rest) = referrer.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    let host = host.trim_end_matches('.');
    let host = host.strip_prefix("www.").unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether `host` is one of the site's domains or below one (domains are
/// stored lower-case).
fn is_own_domain<'d>(host: &str, mut domains: impl Iterator<Item = &'d str>) -> bool {
    domains.any(|domain| {
        let domain = domain.trim().trim_start_matches("www.");
        !domain.is_empty() && (host == domain || host.strip_suffix(domain).is_some_and(|p| p.ends_with('.')))
    })
}

/// Classifies one event's traffic from its referrer, the query string of its
/// page URL (without '?') and the site's own domains.
pub fn classify(referrer: &str, page_query: &str, own_domains: &[&str]) -> Traffic {
    classify_with(&Referrers::shared(), referrer, page_query, |host| {
        is_own_domain(host, own_domains.iter().copied())
    })
}

fn classify_with(
    referrers: &Referrers,
    referrer: &str,
    page_query: &str,
    is_own: impl Fn(&str) -> bool,
) -> Traffic {
    let mut traffic = Traffic::default();
    let mut click: Option<&str> = None;
    if !page_query.is_empty() {
        for (key, value) in url::form_urlencoded::parse(page_query.as_bytes()) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let slot = match key.to_ascii_lowercase().as_str() {
                "utm_source" => &mut traffic.utm_source,
                "utm_medium" => &mut traffic.utm_medium,
                "utm_campaign" => &mut traffic.campaign,
                "utm_term" => &mut traffic.utm_term,
                "utm_content" => &mut traffic.utm_content,
                other => {
                    if click.is_none() {
                        click = CLICK_IDS.iter().find(|(id, _)| *id == other).map(|(_, n)| *n);
                    }
                    continue;
                }
            };
            if slot.is_empty() {
                *slot = value.to_owned();
            }
        }
    }
    let host = (!referrer.is_empty()).then(|| referrer_host(referrer)).flatten();
    let internal = host.as_deref().is_some_and(is_own);
    let known = host
        .as_deref()
        .filter(|_| !internal)
        .and_then(|h| referrers.lookup(h));
    let by_referrer: Option<(String, &'static str)> = match (&host, internal, &known) {
        (Some(h), true, _) => Some((h.clone(), "internal")),
        (_, _, Some((name, medium))) => Some((name.to_string(), medium)),
        (Some(h), false, None) => Some((h.clone(), "referral")),
        (None, ..) => None,
    };
    (traffic.source, traffic.medium) = if !traffic.utm_source.is_empty() {
        let canonical = referrers.canonical(&traffic.utm_source);
        let source = canonical
            .as_ref()
            .map_or_else(|| traffic.utm_source.clone(), |(name, _)| name.to_string());
        let medium = utm_medium_class(&traffic.utm_medium)
            .or(click.map(|_| "paid"))
            .or(by_referrer.as_ref().map(|(_, m)| *m).filter(|m| *m != "internal"))
            .or(canonical.map(|(_, m)| m))
            .unwrap_or("referral");
        (source, medium)
    } else if let Some(network) = click {
        (network.to_owned(), "paid")
    } else if let Some((source, medium)) = by_referrer {
        let medium = match utm_medium_class(&traffic.utm_medium) {
            Some(m) if medium != "internal" => m,
            _ => medium,
        };
        (source, medium)
    } else if let Some(medium) = utm_medium_class(&traffic.utm_medium) {
        (DIRECT.to_owned(), medium)
    } else {
        (DIRECT.to_owned(), "direct")
    };
    traffic
}

/// The source stage.
pub struct SourceStage {
    referrers: Arc<Referrers>,
}

impl Stage for SourceStage {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        let site = &draft.facts.site;
        let own = |host: &str| {
            let domains = std::iter::once(site.domain.as_str())
                .chain(site.additional_domains.iter().map(String::as_str));
            is_own_domain(host, domains)
        };
        let traffic = classify_with(&self.referrers, &draft.stored.referrer, &draft.stored.query, own);
        let stored = &mut draft.stored;
        stored.source = traffic.source;
        stored.medium = traffic.medium.to_owned();
        stored.campaign = traffic.campaign;
        stored.utm_source = traffic.utm_source;
        stored.utm_medium = traffic.utm_medium;
        stored.utm_term = traffic.utm_term;
        stored.utm_content = traffic.utm_content;
        // The tags now live in their fields: the stored URL keeps the page's own parameters.
        if !stored.query.is_empty() {
            stored.query = without_tracking(&stored.query);
        }
        Ok(())
    }
}

/// A query string (without '?') without its campaign tags (`utm_*`) and ad
/// click ids; the other parameters keep their order and encoding.
pub fn without_tracking(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default().to_ascii_lowercase();
            !(key.starts_with("utm_") || CLICK_IDS.iter().any(|(id, _)| *id == key))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_query_drops_campaign_tags_and_click_ids_only() {
        assert_eq!(
            without_tracking("item=42&utm_source=news&UTM_Medium=email&gclid=abc&q=a%20b"),
            "item=42&q=a%20b"
        );
        assert_eq!(without_tracking("utm_campaign=x"), "");
        assert_eq!(without_tracking("page=2"), "page=2");
    }

    #[test]
    fn most_specific_host_wins() {
        let own = ["example.com"];
        let t = |r: &str| {
            let t = classify(r, "", &own);
            (t.source, t.medium)
        };
        assert_eq!(t("https://mail.google.com/mail/u/0/"), ("Gmail".into(), "email"));
        assert_eq!(t("https://www.google.co.uk/"), ("Google".into(), "organic"));
        assert_eq!(t("https://news.google.com/"), ("Google News".into(), "referral"));
        assert_eq!(
            t("https://blog.example.com/post"),
            ("blog.example.com".into(), "internal")
        );
        assert_eq!(
            t("https://notexample.com/"),
            ("notexample.com".into(), "referral")
        );
        assert_eq!(t(""), (DIRECT.into(), "direct"));
    }

    #[test]
    fn tld_wildcards_need_a_suffix_shape() {
        assert!(is_public_suffix_like("com"));
        assert!(is_public_suffix_like("co.uk"));
        assert!(!is_public_suffix_like("example.com"));
        assert!(!is_public_suffix_like("a.b.c"));
    }
}
