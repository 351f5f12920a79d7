//! Geo-IP: country, region and city of the client address, from a
//! MaxMind-format database (`--geoip-db`: GeoLite2-City / GeoLite2-Country,
//! or DB-IP's lite databases as shipped by the `@ip-location-db/*-mmdb` npm
//! packages). Without a database, geo stays empty. The address itself is
//! never stored.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{Draft, Outcome, Stage};

/// Configuration of the geo stage.
#[derive(Clone, Debug, Default)]
pub struct GeoConfig {
    /// The `.mmdb` file; `None` leaves geo empty.
    pub database: Option<PathBuf>,
}

/// The geo database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the geo-IP database {path}: {message}")]
pub struct GeoError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

impl GeoConfig {
    /// The runtime stage; opens and checks the database.
    pub fn build(&self) -> Result<GeoStage, GeoError> {
        let Some(path) = &self.database else {
            return Ok(GeoStage { reader: None });
        };
        let fail = |message: String| GeoError {
            path: path.clone(),
            message,
        };
        let reader = maxminddb::Reader::open_readfile(path).map_err(|err| fail(err.to_string()))?;
        let kind = &reader.metadata().database_type;
        tracing::info!(path = %path.display(), database_type = %kind, "geo-IP database loaded");
        Ok(GeoStage {
            reader: Some(Arc::new(reader)),
        })
    }
}

/// Where an address is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// ISO 3166-1 alpha-2 country code, e.g. "DE".
    pub country: String,
    /// Region (state, province) name in English, e.g. "Bavaria".
    pub region: String,
    /// City name in English.
    pub city: String,
}

/// The fields of both database schemas: MaxMind's nested records and the
/// flat records of the `@ip-location-db` builds.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Record {
    country: Option<Country>,
    subdivisions: Option<Vec<Named>>,
    city: Option<City>,
    country_code: Option<String>,
    state1: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Country {
    iso_code: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Named {
    names: Option<Names>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Names {
    en: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum City {
    Flat(String),
    Nested(Named),
}

/// The geo stage.
pub struct GeoStage {
    reader: Option<Arc<maxminddb::Reader<Vec<u8>>>>,
}

impl GeoStage {
    /// Looks an address up; empty when unknown.
    pub fn locate(&self, ip: IpAddr) -> Place {
        let Some(reader) = &self.reader else {
            return Place::default();
        };
        // An IPv4-mapped IPv6 address is an IPv4 client behind a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let record: Record = match reader.lookup(ip).and_then(|found| found.decode()) {
            Ok(Some(record)) => record,
            // Not in the database, or an IPv6 address in an IPv4-only one.
            Ok(None) | Err(_) => return Place::default(),
        };
        let english = |named: Named| named.names.and_then(|n| n.en).unwrap_or_default();
        Place {
            country: record
                .country
                .and_then(|c| c.iso_code)
                .or(record.country_code)
                .unwrap_or_default(),
            region: record
                .subdivisions
                .and_then(|s| s.into_iter().next())
                .map(english)
                .or(record.state1)
                .unwrap_or_default(),
            city: match record.city {
                Some(City::Flat(name)) => name,
                Some(City::Nested(named)) => english(named),
                None => String::new(),
            },
        }
    }
}

impl Stage for GeoStage {
    fn apply(&self, draft: &mut Draft<'_>) -> Outcome {
        if let Some(ip) = draft.ip {
            let place = self.locate(ip);
            let stored = &mut draft.stored;
            (stored.country, stored.region, stored.city) = (place.country, place.region, place.city);
        }
        Ok(())
    }
}
