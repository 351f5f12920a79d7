//! Visitor id: a keyed 64-bit hash, so reports count unique visitors without
//! storing an IP address or setting a cookie.
//!
//! In order of preference: the SDK's anonymous id, the user id, else a hash of
//! site, IP and user agent keyed with the site's current salt, which rotates
//! daily (or weekly, or never, by the site's policy; see `crate::salts`).

use super::{Draft, Outcome, Stage};

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
            let mut octets = [0u8; 16];
            let ip: &[u8] = match draft.ip {
                Some(std::net::IpAddr::V4(v4)) => {
                    octets[..4].copy_from_slice(&v4.octets());
                    &octets[..4]
                }
                Some(std::net::IpAddr::V6(v6)) => {
                    octets = v6.octets();
                    &octets
                }
                None => &[],
            };
            let ua = draft.user_agent.as_bytes();
            self.hash(&draft.facts.salt, &[b"web", site, ip, ua])
        };
        Ok(())
    }
}
