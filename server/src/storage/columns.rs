//! Events as columns: the dictionary-encoded form a columnar backend keeps
//! and hands to the query layer, so a report reads only the columns it needs
//! and evaluates a filter or a dimension once per distinct value instead of
//! once per event.
//!
//! Every field of [`StoredEvent`] but the id and the two timestamps is a
//! *dictionary column*: the distinct values of the field (as bytes, in order
//! of first appearance) and, per event, the code of its value. Custom
//! properties are one column per key, named `p.<key>`. The empty byte string
//! is always the field's default (empty text, zero, no revenue, property not
//! set), so a column that is absent from a batch reads as all-default.

use std::borrow::Cow;
use std::collections::HashMap;

use prost::Message;

use crate::domain::{StoredEvent, StoredMoney, StoredProp};
use crate::storage::StorageError;

/// Name prefix of the property columns.
pub const PROPERTY_PREFIX: &str = "p.";

/// Reads and writes one field of a stored event as dictionary bytes.
#[derive(Clone, Copy)]
enum Field {
    Text(fn(&StoredEvent) -> &String, fn(&mut StoredEvent) -> &mut String),
    Int(fn(&StoredEvent) -> u64, fn(&mut StoredEvent, u64)),
    Revenue,
}

/// The fixed dictionary columns, by name.
const FIELDS: &[(&str, Field)] = &[
    ("kind", Field::Int(|e| e.kind as u64, |e, v| e.kind = v as i32)),
    ("name", Field::Text(|e| &e.name, |e| &mut e.name)),
    ("hostname", Field::Text(|e| &e.hostname, |e| &mut e.hostname)),
    ("path", Field::Text(|e| &e.path, |e| &mut e.path)),
    ("query", Field::Text(|e| &e.query, |e| &mut e.query)),
    (
        "insecure",
        Field::Int(|e| u64::from(e.insecure), |e, v| e.insecure = v != 0),
    ),
    ("referrer", Field::Text(|e| &e.referrer, |e| &mut e.referrer)),
    ("revenue", Field::Revenue),
    ("visitor", Field::Int(|e| e.visitor, |e, v| e.visitor = v)),
    (
        "client_session",
        Field::Text(|e| &e.client_session, |e| &mut e.client_session),
    ),
    ("user_id", Field::Text(|e| &e.user_id, |e| &mut e.user_id)),
    ("bot", Field::Int(|e| u64::from(e.bot), |e, v| e.bot = v != 0)),
    (
        "non_interaction",
        Field::Int(
            |e| u64::from(e.non_interaction),
            |e, v| e.non_interaction = v != 0,
        ),
    ),
    ("browser", Field::Text(|e| &e.browser, |e| &mut e.browser)),
    (
        "browser_version",
        Field::Text(|e| &e.browser_version, |e| &mut e.browser_version),
    ),
    ("os", Field::Text(|e| &e.os, |e| &mut e.os)),
    (
        "os_version",
        Field::Text(|e| &e.os_version, |e| &mut e.os_version),
    ),
    (
        "device_type",
        Field::Int(|e| e.device_type as u64, |e, v| e.device_type = v as i32),
    ),
    ("country", Field::Text(|e| &e.country, |e| &mut e.country)),
    ("region", Field::Text(|e| &e.region, |e| &mut e.region)),
    ("city", Field::Text(|e| &e.city, |e| &mut e.city)),
    ("source", Field::Text(|e| &e.source, |e| &mut e.source)),
    ("medium", Field::Text(|e| &e.medium, |e| &mut e.medium)),
    ("campaign", Field::Text(|e| &e.campaign, |e| &mut e.campaign)),
    ("utm_term", Field::Text(|e| &e.utm_term, |e| &mut e.utm_term)),
    (
        "utm_content",
        Field::Text(|e| &e.utm_content, |e| &mut e.utm_content),
    ),
    (
        "app_version",
        Field::Text(|e| &e.app_version, |e| &mut e.app_version),
    ),
    ("locale", Field::Text(|e| &e.locale, |e| &mut e.locale)),
    (
        "utm_source",
        Field::Text(|e| &e.utm_source, |e| &mut e.utm_source),
    ),
    (
        "utm_medium",
        Field::Text(|e| &e.utm_medium, |e| &mut e.utm_medium),
    ),
    ("session", Field::Int(|e| e.session, |e, v| e.session = v)),
    (
        "session_start",
        Field::Int(|e| e.session_start as u64, |e, v| e.session_start = v as i64),
    ),
];

/// Names of the fixed dictionary columns (properties come on top).
pub fn fixed_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(name, _)| *name)
}

/// The column of a custom property key.
pub fn property_column(key: &str) -> String {
    format!("{PROPERTY_PREFIX}{key}")
}

fn field(name: &str) -> Option<Field> {
    FIELDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Integers as little-endian bytes without trailing zeros (0 is empty).
fn int_bytes(value: u64) -> Cow<'static, [u8]> {
    let bytes = value.to_le_bytes();
    let len = 8 - (value.leading_zeros() / 8) as usize;
    Cow::Owned(bytes[..len].to_vec())
}

/// The integer an integer column's dictionary value holds.
pub fn bytes_int(bytes: &[u8]) -> u64 {
    let mut full = [0u8; 8];
    let len = bytes.len().min(8);
    full[..len].copy_from_slice(&bytes[..len]);
    u64::from_le_bytes(full)
}

/// The dictionary bytes of column `name` on `e`.
pub fn value_of<'e>(name: &str, e: &'e StoredEvent) -> Cow<'e, [u8]> {
    if let Some(key) = name.strip_prefix(PROPERTY_PREFIX) {
        return match e.properties.get(key) {
            None => Cow::Borrowed(&[]),
            Some(prop) => {
                let mut bytes = vec![1u8];
                prop.encode(&mut bytes).expect("a Vec grows");
                Cow::Owned(bytes)
            }
        };
    }
    match field(name) {
        Some(Field::Text(get, _)) => Cow::Borrowed(get(e).as_bytes()),
        Some(Field::Int(get, _)) => int_bytes(get(e)),
        Some(Field::Revenue) => match &e.revenue {
            None => Cow::Borrowed(&[]),
            Some(money) => {
                let mut bytes = vec![1u8];
                money.encode(&mut bytes).expect("a Vec grows");
                Cow::Owned(bytes)
            }
        },
        None => Cow::Borrowed(&[]),
    }
}

/// Sets the field that column `name` holds on `e` from one of its
/// dictionary values (the empty value leaves the default).
pub fn apply(name: &str, value: &[u8], e: &mut StoredEvent) -> Result<(), StorageError> {
    if value.is_empty() {
        return Ok(());
    }
    let corrupt = |err: prost::DecodeError| StorageError::Corrupt(format!("column {name}: {err}"));
    if let Some(key) = name.strip_prefix(PROPERTY_PREFIX) {
        let prop = StoredProp::decode(&value[1..]).map_err(corrupt)?;
        e.properties.insert(key.to_owned(), prop);
        return Ok(());
    }
    match field(name) {
        Some(Field::Text(_, set)) => {
            *set(e) = String::from_utf8(value.to_vec())
                .map_err(|_| StorageError::Corrupt(format!("column {name}: not UTF-8")))?;
        }
        Some(Field::Int(_, set)) => set(e, bytes_int(value)),
        Some(Field::Revenue) => e.revenue = Some(StoredMoney::decode(&value[1..]).map_err(corrupt)?),
        None => {}
    }
    Ok(())
}

/// One dictionary column of a batch of events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Column {
    /// The distinct values, concatenated.
    values: Vec<u8>,
    /// End offset of each value in `values`.
    ends: Vec<u32>,
    /// The code of each event's value.
    codes: Vec<u32>,
}

impl Column {
    /// A column of `len` events that all hold the default value.
    pub fn defaults(len: usize) -> Self {
        Self {
            values: Vec::new(),
            ends: vec![0],
            codes: vec![0; len],
        }
    }

    /// Builds column `name` of `events`.
    pub fn build(name: &str, events: &[StoredEvent]) -> Self {
        let mut column = Self::default();
        column.codes = match field(name) {
            // Integers are looked up as integers: no bytes made per event.
            Some(Field::Int(get, _)) => column.codes_of(events.iter().map(get), |v| int_bytes(*v)),
            _ => column.codes_of(events.iter().map(|e| value_of(name, e)), |v| v.clone()),
        };
        column
    }

    /// The code of each of `values`, adding each new one to the dictionary
    /// as `bytes` gives it.
    fn codes_of<'v, T: std::hash::Hash + Eq>(
        &mut self,
        values: impl Iterator<Item = T>,
        bytes: impl Fn(&T) -> Cow<'v, [u8]>,
    ) -> Vec<u32> {
        let mut seen: HashMap<T, u32, foldhash::fast::RandomState> = HashMap::default();
        values
            .map(|value| {
                let next = seen.len() as u32;
                *seen.entry(value).or_insert_with_key(|value| {
                    self.values.extend_from_slice(&bytes(value));
                    self.ends.push(self.values.len() as u32);
                    next
                })
            })
            .collect()
    }

    /// Events in the column.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// True when the column holds no events.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The code of every event's value.
    pub fn codes(&self) -> &[u32] {
        &self.codes
    }

    /// The number of distinct values.
    pub fn distinct(&self) -> usize {
        self.ends.len()
    }

    /// The value with `code`.
    pub fn value(&self, code: u32) -> &[u8] {
        let end = self.ends[code as usize] as usize;
        let start = match code {
            0 => 0,
            c => self.ends[c as usize - 1] as usize,
        };
        &self.values[start..end]
    }

    /// True when every event holds the default (empty) value.
    pub fn all_default(&self) -> bool {
        self.values.is_empty()
    }

    /// Serialises the column (uncompressed): the dictionary, then the codes
    /// at the narrowest fixed width that holds them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        prost::encoding::encode_varint(self.ends.len() as u64, out);
        let mut start = 0usize;
        for end in &self.ends {
            let value = &self.values[start..*end as usize];
            prost::encoding::encode_varint(value.len() as u64, out);
            out.extend_from_slice(value);
            start = *end as usize;
        }
        let width: usize = match self.ends.len() {
            0..=0x100 => 1,
            0x101..=0x1_0000 => 2,
            _ => 4,
        };
        out.push(width as u8);
        out.reserve(self.codes.len() * width);
        for code in &self.codes {
            out.extend_from_slice(&code.to_le_bytes()[..width]);
        }
    }

    /// Reads a column of `len` events written by [`Column::encode`].
    pub fn decode(mut bytes: &[u8], len: usize) -> Result<Self, StorageError> {
        let corrupt = || StorageError::Corrupt("dictionary column".into());
        let distinct = prost::encoding::decode_varint(&mut bytes).map_err(|_| corrupt())? as usize;
        let mut column = Self {
            values: Vec::new(),
            ends: Vec::with_capacity(distinct.min(bytes.len())),
            codes: Vec::with_capacity(len),
        };
        for _ in 0..distinct {
            let n = prost::encoding::decode_varint(&mut bytes).map_err(|_| corrupt())? as usize;
            let value = bytes.get(..n).ok_or_else(corrupt)?;
            column.values.extend_from_slice(value);
            column.ends.push(column.values.len() as u32);
            bytes = &bytes[n..];
        }
        let (&width, codes) = bytes.split_first().ok_or_else(corrupt)?;
        let width = usize::from(width);
        if !matches!(width, 1 | 2 | 4) || codes.len() != len * width {
            return Err(corrupt());
        }
        match width {
            1 => column.codes.extend(codes.iter().map(|c| u32::from(*c))),
            2 => column.codes.extend(
                codes
                    .chunks_exact(2)
                    .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
            ),
            _ => column.codes.extend(
                codes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
        if column
            .codes
            .iter()
            .copied()
            .max()
            .is_some_and(|c| c as usize >= distinct)
        {
            return Err(corrupt());
        }
        Ok(column)
    }

    /// Sets this column's field on each of `events` (one per code).
    pub fn apply_to(&self, name: &str, events: &mut [StoredEvent]) -> Result<(), StorageError> {
        if self.all_default() {
            return Ok(());
        }
        for (e, code) in events.iter_mut().zip(&self.codes) {
            apply(name, self.value(*code), e)?;
        }
        Ok(())
    }
}

/// A batch of one site's events as columns, read on demand: what a columnar
/// backend hands to reports. Events of a batch are in no particular order.
pub trait ColumnBatch: Send {
    /// Events in the batch.
    fn len(&self) -> usize;

    /// True when the batch holds no events.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest and latest timestamp in the batch.
    fn bounds(&self) -> (i64, i64);

    /// Every event's timestamp, microseconds since the Unix epoch.
    fn timestamps(&self) -> Result<Vec<i64>, StorageError>;

    /// The dictionary column `name` (all-default when the batch has none).
    fn column(&self, name: &str) -> Result<Column, StorageError>;
}

/// A batch held in memory, built from decoded events.
pub struct EventsBatch {
    events: Vec<StoredEvent>,
}

impl EventsBatch {
    /// A batch of `events` (not empty).
    pub fn new(events: Vec<StoredEvent>) -> Self {
        Self { events }
    }
}

impl ColumnBatch for EventsBatch {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn bounds(&self) -> (i64, i64) {
        let ts = self.events.iter().map(|e| e.ts_micros);
        (ts.clone().min().unwrap_or_default(), ts.max().unwrap_or_default())
    }

    fn timestamps(&self) -> Result<Vec<i64>, StorageError> {
        Ok(self.events.iter().map(|e| e.ts_micros).collect())
    }

    fn column(&self, name: &str) -> Result<Column, StorageError> {
        Ok(Column::build(name, &self.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PropValue;

    fn sample(n: u64) -> StoredEvent {
        let mut e = StoredEvent {
            event_id: n.to_be_bytes().repeat(2),
            ts_micros: n as i64 * 1000,
            kind: (n % 3) as i32 + 1,
            path: format!("/p/{}", n % 4),
            visitor: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            bot: n.is_multiple_of(5),
            session_start: -(n as i64),
            device_type: 2,
            ..Default::default()
        };
        if n.is_multiple_of(2) {
            e.properties.insert(
                "plan".into(),
                StoredProp {
                    value: Some(PropValue::Str(format!("tier{}", n % 3))),
                },
            );
            e.revenue = Some(StoredMoney {
                currency: "EUR".into(),
                units: n as i64,
                nanos: -5,
            });
        }
        if n.is_multiple_of(7) {
            e.properties.insert("empty".into(), StoredProp { value: None });
        }
        e
    }

    #[test]
    fn every_column_round_trips_through_its_encoding() {
        let events: Vec<StoredEvent> = (0..300).map(sample).collect();
        let mut back: Vec<StoredEvent> = events
            .iter()
            .map(|e| StoredEvent {
                event_id: e.event_id.clone(),
                ts_micros: e.ts_micros,
                received_micros: e.received_micros,
                ..Default::default()
            })
            .collect();
        let names = fixed_names()
            .map(str::to_owned)
            .chain(["plan", "empty"].map(property_column));
        for name in names {
            let column = Column::build(&name, &events);
            let mut bytes = Vec::new();
            column.encode(&mut bytes);
            let decoded = Column::decode(&bytes, events.len()).unwrap();
            assert_eq!(decoded, column, "{name}");
            decoded.apply_to(&name, &mut back).unwrap();
        }
        assert!(back == events);
    }

    #[test]
    fn codes_widen_with_the_dictionary() {
        let events: Vec<StoredEvent> = (0..70_000u64)
            .map(|n| StoredEvent {
                visitor: n,
                ..Default::default()
            })
            .collect();
        let column = Column::build("visitor", &events);
        assert_eq!(column.distinct(), 70_000);
        let mut bytes = Vec::new();
        column.encode(&mut bytes);
        assert_eq!(Column::decode(&bytes, events.len()).unwrap(), column);
        assert!(Column::decode(&bytes, events.len() + 1).is_err());
    }

    #[test]
    fn absent_columns_read_as_defaults() {
        let column = Column::build("utm_term", &[StoredEvent::default(), StoredEvent::default()]);
        assert!(column.all_default());
        assert_eq!(column, Column::defaults(2));
        assert_eq!(column.value(0), b"");
    }
}
