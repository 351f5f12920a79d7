//! User agent: browser, OS and device class from the uap-core regexes
//! (`server/data/uap-core/regexes.yaml`), memoised per user agent string.
//!
//! Native SDK events describe the OS and device in their context; what the
//! context says wins over what the user agent suggests.

use std::sync::{Arc, LazyLock};

use tally_proto::v1::DeviceType;

use super::memo::Memo;
use super::{Draft, Outcome, Stage};

/// The uap-core regexes, compiled into the binary.
const REGEXES: &str = include_str!("../../data/uap-core/regexes.yaml");

/// Configuration of the user agent stage.
#[derive(Clone, Debug)]
pub struct UserAgentConfig {
    /// Distinct user agents whose parse results are kept in memory.
    pub cache_entries: usize,
}

impl Default for UserAgentConfig {
    fn default() -> Self {
        Self {
            cache_entries: 20_000,
        }
    }
}

impl UserAgentConfig {
    /// The runtime stage. The regexes are compiled once per process.
    pub fn build(&self) -> UserAgentStage {
        UserAgentStage {
            parser: UaParser::shared(),
            memo: Memo::new(self.cache_entries),
        }
    }
}

/// What the stage copies into an event, ready to copy.
struct Fields {
    browser: String,
    browser_version: String,
    os: String,
    os_version: String,
    device_type: DeviceType,
}

impl From<UaInfo> for Fields {
    fn from(info: UaInfo) -> Self {
        Self {
            browser_version: info.browser.short_version(),
            os_version: info.os.short_version(),
            browser: info.browser.family,
            os: info.os.family,
            device_type: info.device_type,
        }
    }
}

/// One parsed part (browser or OS): a family and up to four version parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family {
    /// e.g. "Chrome", "Mac OS X"; "Other" when no regex matches.
    pub family: String,
    /// Version parts: major, minor, patch, patch minor.
    pub version: [Option<String>; 4],
}

impl Family {
    /// "major.minor" (or just "major"); empty without a version.
    pub fn short_version(&self) -> String {
        match &self.version {
            [Some(major), Some(minor), ..] => format!("{major}.{minor}"),
            [Some(major), ..] => major.clone(),
            _ => String::new(),
        }
    }
}

/// Everything the user agent says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UaInfo {
    /// Browser family and version.
    pub browser: Family,
    /// OS family and version.
    pub os: Family,
    /// uap-core device family ("iPhone", "Spider", "Other", ...).
    pub device: String,
    /// Device brand, when known.
    pub brand: Option<String>,
    /// Device model, when known.
    pub model: Option<String>,
    /// Device class.
    pub device_type: DeviceType,
}

/// The compiled uap-core regexes.
pub struct UaParser {
    extractor: ua_parser::Extractor<'static>,
}

static SHARED: LazyLock<Arc<UaParser>> = LazyLock::new(|| {
    let regexes: ua_parser::Regexes<'static> =
        serde_yaml_ng::from_str(REGEXES).expect("the embedded regexes.yaml is valid");
    let extractor = ua_parser::Extractor::try_from(regexes).expect("the embedded regexes compile");
    Arc::new(UaParser { extractor })
});

impl UaParser {
    /// The process-wide parser over the embedded regexes (compiled on first use).
    pub fn shared() -> Arc<UaParser> {
        SHARED.clone()
    }

    /// Parses one user agent string.
    pub fn parse(&self, ua: &str) -> UaInfo {
        let browser = match self.extractor.ua.extract(ua) {
            Some(v) => Family {
                family: v.family.into_owned(),
                version: [v.major, v.minor, v.patch, v.patch_minor].map(|p| p.map(str::to_owned)),
            },
            None => Family::other(),
        };
        let os = match self.extractor.os.extract(ua) {
            Some(v) => Family {
                family: v.os.into_owned(),
                version: [v.major, v.minor, v.patch, v.patch_minor].map(|p| p.map(|s| s.into_owned())),
            },
            None => Family::other(),
        };
        let (device, brand, model) = match self.extractor.dev.extract(ua) {
            Some(v) => (
                v.device.into_owned(),
                v.brand.map(|s| s.into_owned()),
                v.model.map(|s| s.into_owned()),
            ),
            None => ("Other".to_owned(), None, None),
        };
        let device_type = device_type(ua, &os.family, &device);
        UaInfo {
            browser,
            os,
            device,
            brand,
            model,
            device_type,
        }
    }
}

impl Family {
    fn other() -> Self {
        Self {
            family: "Other".into(),
            version: Default::default(),
        }
    }
}

/// Device class from the user agent, the OS family and uap's device family.
/// uap-core names devices but not their class; these rules follow the tokens
/// browsers and devices put in their user agents.
fn device_type(ua: &str, os: &str, device: &str) -> DeviceType {
    let has = |token: &str| ua.contains(token);
    if device == "Spider" {
        return DeviceType::Bot;
    }
    if ["PlayStation", "Xbox", "Nintendo"].iter().any(|t| has(t)) {
        return DeviceType::Console;
    }
    let tv_tokens = [
        "SmartTV",
        "SMART-TV",
        "Smart-TV",
        "SmartTv",
        "SMARTTV",
        "GoogleTV",
        "Google TV",
        "AppleTV",
        "Apple TV",
        "CrKey",
        "Roku",
        "BRAVIA",
        "HbbTV",
        "NetCast",
        "Web0S",
        "webOS.TV",
        "Tizen TV",
        "AFTB",
        "AFTM",
        "AFTS",
        "AFTT",
        "AFTK",
        "AndroidTV",
        "Android TV",
        "DTV",
        "Viera",
    ];
    if tv_tokens.iter().any(|t| has(t)) || matches!(os, "tvOS" | "Roku" | "webOS TV") {
        return DeviceType::Tv;
    }
    let android = os == "Android" || has("Android");
    if has("iPad")
        || has("Tablet")
        || has("PlayBook")
        || has("Kindle")
        || has("Silk")
        || (android && !has("Mobile") && !has("Mobi"))
    {
        return DeviceType::Tablet;
    }
    if has("Mobi")
        || has("iPhone")
        || has("iPod")
        || has("Windows Phone")
        || has("Opera Mini")
        || android
        || matches!(
            os,
            "iOS" | "Windows Phone" | "KaiOS" | "BlackBerry OS" | "Symbian OS"
        )
    {
        return DeviceType::Mobile;
    }
    if ua.trim().is_empty() {
        return DeviceType::Unspecified;
    }
    DeviceType::Desktop
}

/// The user agent stage.
pub struct UserAgentStage {
    parser: Arc<UaParser>,
    memo: Memo<Fields>,
}

impl Stage for UserAgentStage {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        if draft.user_agent.is_empty() {
            return Ok(());
        }
        let info = self
            .memo
            .get_or(draft.user_agent, |ua| self.parser.parse(ua).into());
        let stored = &mut draft.stored;
        stored.browser.clone_from(&info.browser);
        stored.browser_version.clone_from(&info.browser_version);
        // A native SDK's context names the OS and device class exactly.
        if stored.os.is_empty() {
            stored.os.clone_from(&info.os);
            stored.os_version.clone_from(&info.os_version);
        }
        if stored.device_type == DeviceType::Unspecified as i32 {
            stored.device_type = info.device_type as i32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.91 Safari/537.36";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const ANDROID_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    const TIZEN_TV: &str = "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 76.0.3809.146/6.0 TV Safari/537.36";
    const PS5: &str = "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0 Safari/605.1.15";
    const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    #[test]
    fn parses_families_versions_and_device_class() {
        let parser = UaParser::shared();
        let chrome = parser.parse(CHROME_MAC);
        assert_eq!(chrome.browser.family, "Chrome");
        assert_eq!(chrome.browser.short_version(), "124.0");
        assert_eq!(chrome.os.family, "Mac OS X");
        assert_eq!(chrome.os.short_version(), "10.15");
        assert_eq!(chrome.device_type, DeviceType::Desktop);
        let safari = parser.parse(SAFARI_IPHONE);
        assert_eq!(
            (safari.browser.family.as_str(), safari.os.family.as_str()),
            ("Mobile Safari", "iOS")
        );
        assert_eq!(safari.os.short_version(), "17.4");
        assert_eq!(safari.device_type, DeviceType::Mobile);
        assert_eq!(parser.parse(ANDROID_TABLET).device_type, DeviceType::Tablet);
        assert_eq!(parser.parse(ANDROID_PHONE).device_type, DeviceType::Mobile);
        assert_eq!(parser.parse(TIZEN_TV).device_type, DeviceType::Tv);
        assert_eq!(parser.parse(PS5).device_type, DeviceType::Console);
        assert_eq!(parser.parse(GOOGLEBOT).device_type, DeviceType::Bot);
        let unknown = parser.parse("definitely not a browser");
        assert_eq!(
            (unknown.browser.family.as_str(), unknown.os.family.as_str()),
            ("Other", "Other")
        );
    }
}
