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

use aho_corasick::{AhoCorasick, MatchKind};
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

/// The pattern as plain text, when it is one (only escaped punctuation, no
/// regex syntax). Most of the list is; plain texts are matched together by
/// one Aho-Corasick automaton, far faster than as regexes.
fn literal(pattern: &str) -> Option<String> {
    let mut text = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) if !escaped.is_ascii_alphanumeric() => text.push(escaped),
                _ => return None,
            },
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => return None,
            c => text.push(c),
        }
    }
    Some(text)
}

/// A short product token ("RED/", "008/") must match from the start of a
/// word: it would otherwise match inside browser and app names ("WIRED/",
/// "Opera Mini/4.4.39008/"). Other patterns ("Sonic", meant to match
/// "RankSonic") match anywhere, as the list intends.
fn is_short_token(pattern: &str) -> bool {
    pattern.len() < 8 && pattern.ends_with("\\/") && pattern.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// The compiled crawler list and automation tokens.
pub struct BotDetector {
    /// Plain-text patterns that match anywhere.
    anywhere: AhoCorasick,
    /// Plain-text short tokens that must start a word.
    word_start: AhoCorasick,
    /// The few real regular expressions, as one alternation.
    regexes: Regex,
}

static SHARED: LazyLock<Arc<BotDetector>> = LazyLock::new(|| {
    let mut anywhere: Vec<String> = AUTOMATION_TOKENS.iter().map(|t| t.to_string()).collect();
    let mut word_start = Vec::new();
    let mut regexes = Vec::new();
    for entry in crawler_list() {
        match (literal(&entry.pattern), is_short_token(&entry.pattern)) {
            (Some(text), true) => word_start.push(text),
            (Some(text), false) => anywhere.push(text),
            (None, true) => regexes.push(format!("(?:^|[^A-Za-z0-9])(?:{})", entry.pattern)),
            (None, false) => regexes.push(format!("(?:{})", entry.pattern)),
        }
    }
    let automaton = |patterns: Vec<String>| {
        AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(patterns)
            .expect("the crawler texts build an automaton")
    };
    Arc::new(BotDetector {
        anywhere: automaton(anywhere),
        word_start: automaton(word_start),
        regexes: Regex::new(&regexes.join("|")).expect("the embedded crawler patterns compile"),
    })
});

impl BotDetector {
    /// The process-wide detector (compiled on first use).
    pub fn shared() -> Arc<BotDetector> {
        SHARED.clone()
    }

    /// Whether a (non-empty) user agent is a bot's, by the crawler list and
    /// the automation tokens.
    pub fn is_bot(&self, ua: &str) -> bool {
        let starts_word = |start: usize| start == 0 || !ua.as_bytes()[start - 1].is_ascii_alphanumeric();
        self.anywhere.is_match(ua)
            || self
                .word_start
                .find_overlapping_iter(ua)
                .any(|m| starts_word(m.start()))
            || self.regexes.is_match(ua)
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
    fn plain_patterns_are_found_and_short_tokens_start_words() {
        assert_eq!(literal("Googlebot\\/").as_deref(), Some("Googlebot/"));
        assert_eq!(literal("[wW]get"), None);
        assert!(is_short_token("RED\\/"));
        assert!(!is_short_token("Sonic"));
        let detector = BotDetector::shared();
        assert!(detector.is_bot("RED/1.0"));
        assert!(
            !detector.is_bot("Mozilla/5.0 (iPad; U; CPU iPhone OS 7_0 like Mac OS X; de-DE) WIRED/3.2.3")
        );
        assert!(detector.is_bot("Mozilla/5.0 (compatible; RankSonicSiteAuditor/1.0)"));
        assert!(detector.is_bot("Wget/1.21"));
    }

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
