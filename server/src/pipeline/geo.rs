//! Geo-IP: country, region and city of the client address, from
//! MaxMind-format databases (`--geoip-db`: GeoLite2-City / GeoLite2-Country,
//! or DB-IP's lite databases as shipped by the `@ip-location-db/*-mmdb` npm
//! packages, which come as one IPv4 and one IPv6 file). An address is looked
//! up in each database in turn until one knows it. Without a database, geo
//! stays empty. The address itself is never stored.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{Draft, Outcome, Stage};

/// Configuration of the geo stage.
#[derive(Clone, Debug, Default)]
pub struct GeoConfig {
    /// The `.mmdb` files, tried in order; none leaves geo empty.
    pub databases: Vec<PathBuf>,
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
    /// The runtime stage; opens and checks the databases.
    pub fn build(&self) -> Result<GeoStage, GeoError> {
        let mut readers = Vec::with_capacity(self.databases.len());
        for path in &self.databases {
            let reader = maxminddb::Reader::open_readfile(path).map_err(|err| GeoError {
                path: path.clone(),
                message: err.to_string(),
            })?;
            let metadata = reader.metadata();
            tracing::info!(
                path = %path.display(),
                database_type = %metadata.database_type,
                ip_version = metadata.ip_version,
                "geo-IP database loaded"
            );
            readers.push(Arc::new(reader));
        }
        Ok(GeoStage { readers })
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
    readers: Vec<Arc<maxminddb::Reader<Vec<u8>>>>,
}

impl GeoStage {
    /// Looks an address up; empty when unknown.
    pub fn locate(&self, ip: IpAddr) -> Place {
        // An IPv4-mapped IPv6 address is an IPv4 client behind a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // Not in a database, or an IPv6 address in an IPv4-only one: try the next.
        let found = self.readers.iter().find_map(|reader| {
            reader
                .lookup(ip)
                .and_then(|found| found.decode::<Record>())
                .ok()
                .flatten()
        });
        let Some(record) = found else {
            return Place::default();
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
        if let Some(ip) = draft.ip.filter(|_| !self.readers.is_empty()) {
            let place = self.locate(ip);
            let stored = &mut draft.stored;
            (stored.country, stored.region, stored.city) = (place.country, place.region, place.city);
        }
        Ok(())
    }
}
