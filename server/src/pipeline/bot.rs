//! Bots: flagged (not dropped) so that reports can leave them out, or show
//! them on request.
//!
//! A user agent is a bot's when any of these holds:
//! - it matches a pattern of the public crawler list
//!   (`server/data/crawler-user-agents/crawler-user-agents.json`);
//! - uap-core classes its device as a spider (device type `bot`);
//! - it names a headless or automated browser;
//! - a web event comes without a user agent at all (every browser sends one).

use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::Deserialize;
use tally_proto::v1::DeviceType;

use super::memo::Memo;
use super::{Draft, Outcome, Stage};

/// The crawler list, compiled into the binary.
pub const CRAWLERS_JSON: &str = include_str!("../../data/crawler-user-agents/crawler-user-agents.json");

/// Tokens of headless and automated browsers that crawler lists do not carry.
const AUTOMATION_TOKENS: &[&str] = &[
    "HeadlessChrome",
    "PhantomJS",
    "Puppeteer",
    "Playwright",
    "Selenium",
    "SlimerJS",
    "Cypress",
    "jsdom",
];

/// Configuration of the bot stage.
#[derive(Clone, Debug)]
pub struct BotConfig {
    /// Distinct user agents whose verdicts are kept in memory.
    pub cache_entries: usize,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            cache_entries: 20_000,
        }
    }
}

impl BotConfig {
    /// The runtime stage. The crawler patterns are compiled once per process.
    pub fn build(&self) -> BotStage {
        BotStage {
            detector: BotDetector::shared(),
            memo: Memo::new(self.cache_entries),
        }
    }
}

/// One entry of the crawler list.
#[derive(Deserialize)]
pub struct CrawlerEntry {
    /// A regular expression over the user agent.
    pub pattern: String,
    /// Example user agents of this crawler.
    #[serde(default)]
    pub instances: Vec<String>,
}

/// The parsed crawler list.
pub fn crawler_list() -> Vec<CrawlerEntry> {
    serde_json::from_str(CRAWLERS_JSON).expect("the embedded crawler list is valid JSON")
}

/// The compiled crawler patterns.
pub struct BotDetector {
    crawlers: Regex,
}

static SHARED: LazyLock<Arc<BotDetector>> = LazyLock::new(|| {
    let alternation = crawler_list()
        .iter()
        .map(|entry| bounded(&entry.pattern))
        .collect::<Vec<_>>()
        .join("|");
    let crawlers = regex::RegexBuilder::new(&alternation)
        .size_limit(64 << 20)
        .dfa_size_limit(16 << 20)
        .build()
        .expect("the embedded crawler patterns compile");
    Arc::new(BotDetector { crawlers })
});

/// A short product token ("RED/", "008/") must match from the start of a
/// word: it would otherwise match inside browser and app names ("WIRED/",
/// "Opera Mini/4.4.39008/"). Other patterns ("Sonic", meant to match
/// "RankSonic") match anywhere, as the list intends.
fn bounded(pattern: &str) -> String {
    let short_token = pattern.len() < 8 && pattern.ends_with("\\/");
    match short_token && pattern.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        true => format!("(?:^|[^A-Za-z0-9])(?:{pattern})"),
        false => format!("(?:{pattern})"),
    }
}

impl BotDetector {
    /// The process-wide detector (compiled on first use).
    pub fn shared() -> Arc<BotDetector> {
        SHARED.clone()
    }

    /// Whether a (non-empty) user agent is a bot's, by the crawler list and
    /// the automation tokens.
    pub fn is_bot(&self, ua: &str) -> bool {
        AUTOMATION_TOKENS.iter().any(|t| ua.contains(t)) || self.crawlers.is_match(ua)
    }
}

/// The bot stage.
pub struct BotStage {
    detector: Arc<BotDetector>,
    memo: Memo<bool>,
}

impl Stage for BotStage {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        let ua = draft.user_agent.trim();
        let bot = if ua.is_empty() {
            draft.web
        } else {
            draft.stored.device_type == DeviceType::Bot as i32
                || *self.memo.get_or(ua, |ua| self.detector.is_bot(ua))
        };
        if bot {
            draft.stored.bot = true;
            draft.stored.device_type = DeviceType::Bot as i32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crawlers_and_headless_browsers_are_bots() {
        let detector = BotDetector::shared();
        assert!(detector.is_bot("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"));
        assert!(detector.is_bot(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36"
        ));
        assert!(!detector.is_bot(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
        ));
    }
}
