//! The admin core: sites and their settings, API keys, exports.

use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use tally_proto::v1;

use crate::auth::{Authenticator, hash_secret};
use crate::convert::{micros_to_timestamp, recorded_event, timestamp_to_micros};
use crate::domain::{KeyKind, KeyRecord, SaltPolicy, SiteId, SiteRecord, now_micros};
use crate::error::{Error, FieldViolation, Result};
use crate::rollup::Rollups;
use crate::storage::{Erase, Store};

const DEFAULT_RETENTION_DAYS: i32 = 425;
const DEFAULT_SESSION_TIMEOUT_MINUTES: i32 = 30;

/// Administers sites and keys.
pub struct Admin {
    store: Arc<dyn Store>,
    rollups: Arc<Rollups>,
}

impl Admin {
    /// An admin core over `store`; tells `rollups` about new sites and time zones.
    pub fn new(store: Arc<dyn Store>, rollups: Arc<Rollups>) -> Self {
        Self { store, rollups }
    }

    /// Loads a site or fails with `NotFound`.
    pub async fn site(&self, site: &SiteId) -> Result<SiteRecord> {
        self.store
            .get_site(site)
            .await?
            .ok_or_else(|| Error::NotFound(format!("site {site}")))
    }

    /// Creates a site with defaults for unset settings.
    pub async fn create_site(&self, site: v1::Site) -> Result<v1::Site> {
        let domain = site.domain.trim().to_ascii_lowercase();
        let site_id = if site.site_id.is_empty() {
            domain.clone()
        } else {
            site.site_id.clone()
        };
        let mut record = SiteRecord {
            site_id,
            domain,
            create_micros: now_micros(),
            ..Default::default()
        };
        apply_settings(&mut record, &site, &[])?;
        let site_id = SiteId::parse(&record.site_id).map_err(|e| e.in_field("site"))?;
        if !self.store.insert_site(record.clone()).await? {
            return Err(Error::AlreadyExists(format!("site {site_id}")));
        }
        self.rollups.site_changed(&record, true);
        tracing::info!(site = %site_id, "site created");
        Ok(site_to_proto(&record))
    }

    /// All sites.
    pub async fn list_sites(&self) -> Result<Vec<v1::Site>> {
        Ok(self.store.list_sites().await?.iter().map(site_to_proto).collect())
    }

    /// Changes settings named by `mask` (all settable fields when empty).
    pub async fn update_site(&self, site: v1::Site, mask: &[String]) -> Result<v1::Site> {
        let id = SiteId::parse(&site.site_id).map_err(|e| e.in_field("site"))?;
        let mut record = self.site(&id).await?;
        apply_settings(&mut record, &site, mask)?;
        self.store.update_site(record.clone()).await?;
        self.rollups.site_changed(&record, false);
        Ok(site_to_proto(&record))
    }

    /// Creates a key and returns its secret once.
    pub async fn create_key(&self, req: v1::CreateApiKeyRequest) -> Result<v1::CreateApiKeyResponse> {
        let Some(kind) = KeyKind::from_i32(req.kind) else {
            return Err(Error::invalid(
                "kind",
                "kind must be KEY_KIND_INGEST, KEY_KIND_QUERY or KEY_KIND_ADMIN",
            ));
        };
        match (kind, req.site_ids.len()) {
            (KeyKind::Ingest, 1) | (KeyKind::Admin, 0) => {}
            (KeyKind::Query, n) if n > 0 => {}
            (KeyKind::Ingest, _) => {
                return Err(Error::invalid("site_ids", "an ingest key needs exactly one site"));
            }
            (KeyKind::Query, _) => {
                return Err(Error::invalid("site_ids", "a query key needs at least one site"));
            }
            (KeyKind::Admin, _) => {
                return Err(Error::invalid(
                    "site_ids",
                    "an admin key applies to every site; leave site_ids empty",
                ));
            }
        }
        for (i, site) in req.site_ids.iter().enumerate() {
            let id = SiteId::parse(site).map_err(|e| e.in_field(&format!("site_ids[{i}]")))?;
            self.site(&id).await?;
        }
        let expire_micros = match &req.expire_time {
            None => 0,
            Some(t) => {
                let at = timestamp_to_micros(t);
                if at <= now_micros() {
                    return Err(Error::invalid("expire_time", "expire_time must be in the future"));
                }
                at
            }
        };
        let secret = format!("tly_{}_{}", kind.tag(), hex::encode(rand::random::<[u8; 20]>()));
        let record = KeyRecord {
            key_id: format!("key_{}", hex::encode(rand::random::<[u8; 6]>())),
            kind: kind as i32,
            site_ids: req.site_ids,
            name: req.name,
            prefix: secret[..12].to_owned(),
            secret_hash: hash_secret(&secret).to_vec(),
            create_micros: now_micros(),
            revoke_micros: 0,
            expire_micros,
            last_used_micros: 0,
        };
        self.store.put_key(record.clone()).await?;
        tracing::info!(key = %record.key_id, kind = ?kind, "api key created");
        Ok(v1::CreateApiKeyResponse {
            key: Some(key_to_proto(&record)),
            secret,
        })
    }

    /// Keys, optionally of one site.
    ///
    /// `auth` knows uses of the last minute that are not stored yet.
    pub async fn list_keys(&self, site_id: &str, auth: &Authenticator) -> Result<Vec<v1::ApiKey>> {
        let keys = self.store.list_keys().await?;
        Ok(keys
            .into_iter()
            .filter(|k| site_id.is_empty() || k.site_ids.iter().any(|s| s == site_id))
            .map(|mut k| {
                k.last_used_micros = auth.last_used(&k);
                key_to_proto(&k)
            })
            .collect())
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, key_id: &str) -> Result<v1::ApiKey> {
        let Some(mut record) = self.store.get_key(key_id).await? else {
            return Err(Error::NotFound(format!("api key {key_id}")));
        };
        if record.revoke_micros == 0 {
            record.revoke_micros = now_micros();
            self.store.put_key(record.clone()).await?;
            tracing::info!(key = %record.key_id, "api key revoked");
        }
        Ok(key_to_proto(&record))
    }

    /// Erases one person's events of a site (GDPR): by visitor id, or by
    /// user id together with the visitor ids that carried it. The site's
    /// rollups are rebuilt without them before this returns.
    pub async fn delete_visitor_data(&self, req: &v1::DeleteVisitorDataRequest) -> Result<u64> {
        let id = SiteId::parse(&req.site_id).map_err(|e| e.in_field("site_id"))?;
        let site = self.site(&id).await?;
        let who = match (req.visitor_id.trim(), req.user_id.trim()) {
            ("", "") => {
                return Err(Error::invalid("visitor_id", "visitor_id or user_id is required"));
            }
            (v, "") => match u64::from_str_radix(v, 16) {
                Ok(n) if v.len() == 16 => Erase::Visitor(n),
                _ => {
                    return Err(Error::invalid(
                        "visitor_id",
                        format!("{v:?} is not a visitor id (16 hex digits, as in RecordedEvent.visitor_id)"),
                    ));
                }
            },
            ("", u) => Erase::User(u.to_owned()),
            _ => return Err(Error::invalid("user_id", "set visitor_id or user_id, not both")),
        };
        let deleted = self.store.erase(&id, &who).await?;
        self.rollups.rebuild_site(self.store.as_ref(), &site).await?;
        tracing::info!(site = %id, deleted, "visitor data erased");
        Ok(deleted)
    }

    /// Deletes every site's events older than its retention (`retention_days`,
    /// by event time); returns how many. Run about hourly.
    pub async fn sweep_retention(&self, now_micros: i64) -> Result<u64> {
        let mut total = 0;
        for site in self.store.list_sites().await? {
            if site.retention_days <= 0 {
                continue;
            }
            let id = SiteId::parse(&site.site_id)?;
            let cut = now_micros - i64::from(site.retention_days) * 86_400_000_000;
            let deleted = self.store.expire(&id, cut).await?;
            self.rollups.forget_before(&site.site_id, cut);
            if deleted > 0 {
                tracing::info!(site = %id, deleted, retention_days = site.retention_days, "retention: old events deleted");
            }
            total += deleted;
        }
        Ok(total)
    }

    /// Streams a site's raw events, `chunk_size` at a time.
    pub async fn export(
        &self,
        req: v1::ExportEventsRequest,
    ) -> Result<impl futures::Stream<Item = Result<v1::ExportEventsResponse>> + use<>> {
        let site = SiteId::parse(&req.site_id)?;
        self.site(&site).await?;
        let range = req.time_range.unwrap_or_default();
        let (Some(start), Some(end)) = (range.start_time, range.end_time) else {
            return Err(Error::invalid(
                "time_range",
                "start_time and end_time are required",
            ));
        };
        let chunk_size = match req.chunk_size {
            0 => 1000,
            n @ 1..=10_000 => n as usize,
            _ => return Err(Error::invalid("chunk_size", "chunk_size must be 1-10,000")),
        };
        let include_bots = req.include_bots;
        let events = self
            .store
            .scan(&site, timestamp_to_micros(&start), timestamp_to_micros(&end))
            .map(move |chunk| {
                chunk.map(|events| {
                    events
                        .iter()
                        .filter(|e| include_bots || !e.bot)
                        .map(recorded_event)
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|chunk| {
                futures::stream::iter(match chunk {
                    Ok(events) => events.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(err) => vec![Err(Error::from(err))],
                })
            })
            .chunks(chunk_size)
            .map(|items| {
                let events = items.into_iter().collect::<Result<Vec<_>>>()?;
                Ok(v1::ExportEventsResponse { events })
            });
        Ok(events)
    }
}

fn wants(mask: &[String], field: &str) -> bool {
    mask.is_empty() || mask.iter().any(|m| m == field)
}

/// Copies and validates the settable fields named by `mask` from `src`.
fn apply_settings(record: &mut SiteRecord, src: &v1::Site, mask: &[String]) -> Result<()> {
    const SETTABLE: [&str; 10] = [
        "domain",
        "name",
        "time_zone",
        "allowed_origins",
        "retention_days",
        "salt_policy",
        "session_timeout_minutes",
        "additional_domains",
        "honor_do_not_track",
        "excluded_ip_ranges",
    ];
    let mut violations = Vec::new();
    let mut bad = |field: &str, description: String| {
        violations.push(FieldViolation {
            field: format!("site.{field}"),
            description,
        });
    };
    for field in mask {
        if !SETTABLE.contains(&field.as_str()) {
            bad(
                field,
                format!("not a settable field; use one of {}", SETTABLE.join(", ")),
            );
        }
    }
    if !mask.is_empty() && wants(mask, "domain") {
        record.domain = src.domain.trim().to_ascii_lowercase();
    }
    if record.domain.is_empty() {
        bad("domain", "domain is required, e.g. \"example.com\"".into());
    } else if url::Host::parse(&record.domain).is_err() {
        bad("domain", format!("{:?} is not a domain name", record.domain));
    }
    if wants(mask, "name") {
        record.name = src.name.clone();
    }
    if wants(mask, "time_zone") {
        record.time_zone = if src.time_zone.is_empty() {
            "UTC".into()
        } else {
            src.time_zone.clone()
        };
        if chrono_tz::Tz::from_str(&record.time_zone).is_err() {
            bad(
                "time_zone",
                format!(
                    "{:?} is not an IANA time zone such as \"Europe/Berlin\"",
                    record.time_zone
                ),
            );
        }
    }
    if wants(mask, "allowed_origins") {
        record.allowed_origins = src
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_owned())
            .collect();
        for (i, origin) in record.allowed_origins.iter().enumerate() {
            let ok = url::Url::parse(origin)
                .map(|u| u.origin().ascii_serialization() == *origin)
                .unwrap_or(false);
            if !ok {
                bad(
                    &format!("allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin such as \"https://example.com\""),
                );
            }
        }
    }
    if wants(mask, "retention_days") {
        record.retention_days = match src.retention_days {
            0 => DEFAULT_RETENTION_DAYS,
            n => n,
        };
        if !(1..=3650).contains(&record.retention_days) {
            bad("retention_days", "retention_days must be 1-3650".into());
        }
    }
    if wants(mask, "salt_policy") {
        record.salt_policy = match src.salt_policy {
            0 => SaltPolicy::Daily as i32,
            n => n,
        };
        let known = [SaltPolicy::Daily, SaltPolicy::Weekly, SaltPolicy::Fixed].map(|p| p as i32);
        if !known.contains(&record.salt_policy) {
            bad(
                "salt_policy",
                "unknown salt policy; use SALT_POLICY_DAILY, SALT_POLICY_WEEKLY or SALT_POLICY_FIXED".into(),
            );
        }
    }
    if wants(mask, "session_timeout_minutes") {
        record.session_timeout_minutes = match src.session_timeout_minutes {
            0 => DEFAULT_SESSION_TIMEOUT_MINUTES,
            n => n,
        };
        if !(1..=1440).contains(&record.session_timeout_minutes) {
            bad(
                "session_timeout_minutes",
                "session_timeout_minutes must be 1-1440".into(),
            );
        }
    }
    if wants(mask, "additional_domains") {
        record.additional_domains = src
            .additional_domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
    }
    if wants(mask, "honor_do_not_track") {
        record.honor_do_not_track = src.honor_do_not_track;
    }
    if wants(mask, "excluded_ip_ranges") {
        record.excluded_ip_ranges = Vec::with_capacity(src.excluded_ip_ranges.len());
        if src.excluded_ip_ranges.len() > MAX_EXCLUDED_IP_RANGES {
            bad(
                "excluded_ip_ranges",
                format!("at most {MAX_EXCLUDED_IP_RANGES} ranges"),
            );
        }
        for (i, range) in src.excluded_ip_ranges.iter().enumerate() {
            match parse_ip_range(range) {
                Ok(net) => record.excluded_ip_ranges.push(net.to_string()),
                Err(message) => bad(&format!("excluded_ip_ranges[{i}]"), message),
            }
        }
    }
    match violations.is_empty() {
        true => Ok(()),
        false => Err(Error::InvalidArgument(violations)),
    }
}

/// Most excluded IP ranges per site.
const MAX_EXCLUDED_IP_RANGES: usize = 100;

/// Parses an address ("203.0.113.7", "2001:db8::1") or a CIDR range
/// ("203.0.113.0/24"); a bare address is a range of one.
pub fn parse_ip_range(raw: &str) -> std::result::Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{raw:?} is not an IP address or a CIDR range such as \"203.0.113.0/24\""))
}

/// The public form of a site.
pub fn site_to_proto(record: &SiteRecord) -> v1::Site {
    v1::Site {
        site_id: record.site_id.clone(),
        domain: record.domain.clone(),
        name: record.name.clone(),
        time_zone: record.time_zone.clone(),
        allowed_origins: record.allowed_origins.clone(),
        retention_days: record.retention_days,
        salt_policy: record.salt_policy,
        session_timeout_minutes: record.session_timeout_minutes,
        additional_domains: record.additional_domains.clone(),
        create_time: Some(micros_to_timestamp(record.create_micros)),
        honor_do_not_track: record.honor_do_not_track,
        excluded_ip_ranges: record.excluded_ip_ranges.clone(),
    }
}

fn key_to_proto(record: &KeyRecord) -> v1::ApiKey {
    v1::ApiKey {
        key_id: record.key_id.clone(),
        kind: record.kind,
        site_ids: record.site_ids.clone(),
        name: record.name.clone(),
        prefix: record.prefix.clone(),
        create_time: Some(micros_to_timestamp(record.create_micros)),
        revoke_time: (record.revoke_micros != 0).then(|| micros_to_timestamp(record.revoke_micros)),
        expire_time: (record.expire_micros != 0).then(|| micros_to_timestamp(record.expire_micros)),
        last_used_time: (record.last_used_micros != 0).then(|| micros_to_timestamp(record.last_used_micros)),
    }
}
