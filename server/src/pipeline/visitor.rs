//! Visitor id: a keyed 64-bit hash, so reports count unique visitors without
//! storing an IP address or setting a cookie.
//!
//! In order of preference: the SDK's anonymous id, the user id, else a hash of
//! site, IP and user agent salted per day (or per site, by the site's policy).

use super::{Draft, Outcome, Stage};
use crate::domain::SaltPolicy;

/// Configuration of the visitor stage.
#[derive(Clone, Debug, Default)]
pub struct VisitorConfig {}

impl VisitorConfig {
    /// The runtime stage, keyed by the instance secret.
    pub fn build(&self, secret: [u8; 32]) -> Visitor {
        Visitor { secret }
    }
}

/// The visitor stage.
pub struct Visitor {
    secret: [u8; 32],
}

const DAY_MICROS: i64 = 86_400_000_000;

impl Visitor {
    fn hash(&self, key: &[u8; 32], parts: &[&[u8]]) -> u64 {
        let mut hasher = blake3::Hasher::new_keyed(key);
        for part in parts {
            // Length-prefix each part so ("ab","c") and ("a","bc") differ.
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    fn salt(&self, draft: &Draft<'_>) -> [u8; 32] {
        let site = draft.facts.site.site_id.as_bytes();
        let policy = draft.facts.site.salt_policy;
        let epoch = match policy {
            p if p == SaltPolicy::Fixed as i32 => 0,
            _ => draft.facts.now_micros.div_euclid(DAY_MICROS),
        };
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        hasher.update(b"salt");
        hasher.update(&epoch.to_le_bytes());
        hasher.update(site);
        *hasher.finalize().as_bytes()
    }
}

impl Stage for Visitor {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        let site = draft.facts.site.site_id.as_bytes();
        let raw = draft.raw;
        draft.stored.visitor = if !raw.anonymous_id.is_empty() {
            self.hash(&self.secret, &[b"anon", site, raw.anonymous_id.as_bytes()])
        } else if !raw.user_id.is_empty() {
            self.hash(&self.secret, &[b"user", site, raw.user_id.as_bytes()])
        } else {
            let ip = draft.ip.map(|ip| ip.to_string()).unwrap_or_default();
            let salt = self.salt(draft);
            self.hash(&salt, &[b"web", ip.as_bytes(), draft.user_agent.as_bytes()])
        };
        Ok(())
    }
}
