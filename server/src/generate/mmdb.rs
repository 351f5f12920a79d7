//! A small writer of MaxMind DB files (format 2.0): `tally generate
//! --write-geoip-db` places the generator's addresses with it, and the geo
//! tests use a real `.mmdb` made here rather than a downloaded database.
//!
//! Layout: a binary search tree over address bits (IPv6 tree, 32-bit
//! records, IPv4 under `::/96`), 16 zero bytes, the data section, then the
//! metadata marker and map.

use std::net::IpAddr;

/// A value of the data section.
#[derive(Clone, Debug)]
pub enum Value {
    /// A UTF-8 string.
    Str(&'static str),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A map with string keys.
    Map(Vec<(&'static str, Value)>),
    /// An array.
    Array(Vec<Value>),
}

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (head, extended) = if kind > 7 {
        (0u8, Some(kind - 7))
    } else {
        (kind << 5, None)
    };
    let mut push_head = |size_bits: u8| {
        out.push(head | size_bits);
        if let Some(ext) = extended {
            out.push(ext);
        }
    };
    match size {
        0..=28 => push_head(size as u8),
        29..=284 => {
            push_head(29);
            out.push((size - 29) as u8);
        }
        285..=65_820 => {
            push_head(30);
            out.extend_from_slice(&((size - 285) as u16).to_be_bytes());
        }
        _ => {
            push_head(31);
            out.extend_from_slice(&((size - 65_821) as u32).to_be_bytes()[1..]);
        }
    }
}

fn uint(out: &mut Vec<u8>, kind: u8, value: u64, width: usize) {
    let bytes = value.to_be_bytes();
    let significant: Vec<u8> = bytes[8 - width..]
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    control(out, kind, significant.len());
    out.extend_from_slice(&significant);
}

fn encode(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => uint(out, 5, u64::from(*n), 2),
        Value::U32(n) => uint(out, 6, u64::from(*n), 4),
        Value::U64(n) => uint(out, 9, *n, 8),
        Value::Map(entries) => {
            control(out, 7, entries.len());
            for (key, value) in entries {
                encode(out, &Value::Str(key));
                encode(out, value);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for item in items {
                encode(out, item);
            }
        }
    }
}

enum Node {
    Empty,
    Data(usize),
    Branch(Box<Node>, Box<Node>),
}

fn insert(node: &mut Node, bits: &[bool], data: usize) {
    match bits.split_first() {
        None => *node = Node::Data(data),
        Some((bit, rest)) => {
            if !matches!(node, Node::Branch(..)) {
                *node = Node::Branch(Box::new(Node::Empty), Box::new(Node::Empty));
            }
            let Node::Branch(left, right) = node else {
                unreachable!()
            };
            insert(if *bit { right } else { left }, rest, data);
        }
    }
}

/// Address bits in the IPv6 tree (IPv4 lives under `::/96`).
fn bits(network: IpAddr, prefix: u8) -> Vec<bool> {
    let (octets, prefix) = match network {
        IpAddr::V4(v4) => (v4.to_ipv6_compatible().octets(), prefix + 96),
        IpAddr::V6(v6) => (v6.octets(), prefix),
    };
    (0..prefix as usize)
        .map(|i| octets[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect()
}

/// Builds a database from `(network, prefix length, record)` entries.
pub fn build(database_type: &'static str, networks: Vec<(IpAddr, u8, Value)>) -> Vec<u8> {
    let mut data = Vec::new();
    let mut root = Node::Branch(Box::new(Node::Empty), Box::new(Node::Empty));
    for (network, prefix, record) in networks {
        let offset = data.len();
        encode(&mut data, &record);
        insert(&mut root, &bits(network, prefix), offset);
    }
    // Number the branches breadth first; leaves become record values.
    let mut order: Vec<&Node> = vec![&root];
    let mut i = 0;
    while i < order.len() {
        if let Node::Branch(left, right) = order[i] {
            for child in [left, right] {
                if matches!(**child, Node::Branch(..)) {
                    order.push(child);
                }
            }
        }
        i += 1;
    }
    let node_count = order.len();
    let mut next_branch = 1;
    let mut tree = Vec::with_capacity(node_count * 8);
    for node in &order {
        let Node::Branch(left, right) = node else {
            unreachable!()
        };
        for child in [left, right] {
            let record = match **child {
                Node::Empty => node_count,
                Node::Data(offset) => node_count + 16 + offset,
                Node::Branch(..) => {
                    next_branch += 1;
                    next_branch - 1
                }
            };
            tree.extend_from_slice(&(record as u32).to_be_bytes());
        }
    }
    let mut file = tree;
    file.extend_from_slice(&[0; 16]);
    file.extend_from_slice(&data);
    file.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let metadata = Value::Map(vec![
        ("node_count", Value::U32(node_count as u32)),
        ("record_size", Value::U16(32)),
        ("ip_version", Value::U16(6)),
        ("database_type", Value::Str(database_type)),
        ("languages", Value::Array(vec![Value::Str("en")])),
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(1_700_000_000)),
        (
            "description",
            Value::Map(vec![("en", Value::Str("tally test database"))]),
        ),
    ]);
    encode(&mut file, &metadata);
    file
}
