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
    /// The keyed hash of `parts`, each prefixed with its length so that
    /// ("ab","c") and ("a","bc") differ.
    fn hash(&self, key: &[u8; 32], parts: &[&[u8]]) -> u64 {
        // Most inputs fit a buffer on the stack, hashed in one call.
        let mut buffer = [0u8; 512];
        let mut len = 0;
        let digest = if parts.iter().map(|p| 8 + p.len()).sum::<usize>() <= buffer.len() {
            for part in parts {
                buffer[len..len + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
                buffer[len + 8..len + 8 + part.len()].copy_from_slice(part);
                len += 8 + part.len();
            }
            blake3::keyed_hash(key, &buffer[..len])
        } else {
            let mut hasher = blake3::Hasher::new_keyed(key);
            for part in parts {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            hasher.finalize()
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_do_not_depend_on_the_input_length() {
        let visitor = VisitorConfig::default().build([3; 32]);
        let key = [9; 32];
        // Ids stored before are kept: the value of a known input is fixed.
        assert_eq!(
            visitor.hash(&key, &[b"web", b"site", &[10, 0, 0, 1], b"Mozilla/5.0"]),
            0xe30f_e430_001b_c6c8_u64
        );
        // Around the buffer's size, both ways of hashing give the same id.
        for ua_len in [0, 400, 460, 470, 480, 600] {
            let ua = vec![b'x'; ua_len];
            let parts: [&[u8]; 4] = [b"web", b"site", &[10, 0, 0, 1], &ua];
            let mut hasher = blake3::Hasher::new_keyed(&key);
            for part in parts {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            let streamed = u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().unwrap());
            assert_eq!(visitor.hash(&key, &parts), streamed, "{ua_len}");
        }
    }
}
