//! The order index of an event: what an assignment needs to know about every order without
//! reading every order's row. Each save writes one index row (a blob) in the event's partition,
//! inside the same conditional batch, with one entry per order the save changed: the order id's
//! digest, the digest of the (user, `Idempotency-Key`) it holds, and, while the order holds or
//! owns slots, its id (so its row is loaded). Read back in save order, the rows give every
//! order's digest, every key's order and the live orders, in about one row per save instead of
//! one per order. Pure encoding here; the digests are the processors' (this crate stores bytes).

/// Clustering key prefix of index rows. Order ids never start with a NUL (the booking
/// processor refuses such ids), so index rows and order rows cannot meet.
pub const INDEX_ROW_PREFIX: &str = "\u{0}index/";
/// The first clustering key after every index row (`/` + 1 is `0`).
pub const INDEX_ROWS_END: &str = "\u{0}index0";

/// Format version written first in every blob.
const VERSION: u8 = 1;
const HAS_KEY: u8 = 1;
const LIVE: u8 = 2;
/// Longest order id the booking processor accepts (ids are UUIDs, 36 bytes): bounds a save's
/// size per order.
pub const MAX_ORDER_ID_BYTES: usize = 64;

/// The clustering key of the index row written by the save that reached `new_offset`. Zero
/// padded, so rows sort in save order.
pub fn index_row_key(new_offset: i64) -> String {
    format!("{INDEX_ROW_PREFIX}{new_offset:020}")
}

/// One order as a save left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIndexEntry {
    /// Digest of the order id.
    pub order: u128,
    /// Digest of the (user, key) this order holds: the first order a key named.
    pub key: Option<u128>,
    /// The order id, while the order holds or owns slots.
    pub live_order_id: Option<String>,
}

impl StoredIndexEntry {
    /// Bytes the entry takes in a blob.
    pub fn encoded_len(&self) -> usize {
        1 + 16
            + self.key.map_or(0, |_| 16)
            + self.live_order_id.as_ref().map_or(0, |id| 2 + id.len())
    }
}

/// Encodes entries as one blob. Ids longer than [`MAX_ORDER_ID_BYTES`] are refused.
pub fn encode(entries: &[StoredIndexEntry]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(1 + entries.iter().map(|e| e.encoded_len()).sum::<usize>());
    out.push(VERSION);
    for entry in entries {
        let mut flags = 0;
        if entry.key.is_some() {
            flags |= HAS_KEY;
        }
        if entry.live_order_id.is_some() {
            flags |= LIVE;
        }
        out.push(flags);
        out.extend_from_slice(&entry.order.to_be_bytes());
        if let Some(key) = entry.key {
            out.extend_from_slice(&key.to_be_bytes());
        }
        if let Some(id) = &entry.live_order_id {
            if id.is_empty() || id.len() > MAX_ORDER_ID_BYTES {
                return Err(format!("order id of {} bytes in the index", id.len()));
            }
            // Bounded by MAX_ORDER_ID_BYTES above.
            out.extend_from_slice(&(id.len() as u16).to_be_bytes());
            out.extend_from_slice(id.as_bytes());
        }
    }
    Ok(out)
}

/// Decodes a blob written by [`encode`]; anything else is an error naming what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Vec<StoredIndexEntry>, String> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.take(1)?[0];
    if version != VERSION {
        return Err(format!(
            "index format {version} (this build reads {VERSION})"
        ));
    }
    let mut entries = Vec::new();
    while reader.at < bytes.len() {
        let flags = reader.take(1)?[0];
        if flags & !(HAS_KEY | LIVE) != 0 {
            return Err(format!("unknown index flags {flags:#04x}"));
        }
        let order = reader.u128()?;
        let key = if flags & HAS_KEY != 0 {
            Some(reader.u128()?)
        } else {
            None
        };
        let live_order_id = if flags & LIVE != 0 {
            let len = usize::from(u16::from_be_bytes([reader.take(1)?[0], reader.take(1)?[0]]));
            if len == 0 || len > MAX_ORDER_ID_BYTES {
                return Err(format!("order id of {len} bytes in the index"));
            }
            let id = std::str::from_utf8(reader.take(len)?)
                .map_err(|_| "order id in the index is not UTF-8".to_owned())?;
            Some(id.to_owned())
        } else {
            None
        };
        entries.push(StoredIndexEntry {
            order,
            key,
            live_order_id,
        });
    }
    Ok(entries)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("index blob ends early at byte {}", self.at));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u128(&mut self) -> Result<u128, String> {
        let mut buf = [0u8; 16];
        buf.copy_from_slice(self.take(16)?);
        Ok(u128::from_be_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = StoredIndexEntry> {
        (
            any::<u128>(),
            proptest::option::of(any::<u128>()),
            proptest::option::of("[a-z0-9-]{1,40}"),
        )
            .prop_map(|(order, key, live_order_id)| StoredIndexEntry {
                order,
                key,
                live_order_id,
            })
    }

    proptest! {
        #[test]
        fn entries_round_trip(entries in proptest::collection::vec(entry(), 0..50)) {
            let blob = encode(&entries).unwrap();
            prop_assert_eq!(blob.len(), 1 + entries.iter().map(|e| e.encoded_len()).sum::<usize>());
            prop_assert_eq!(decode(&blob).unwrap(), entries);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn damaged_blobs_are_refused_with_the_reason() {
        let blob = encode(&[StoredIndexEntry {
            order: 7,
            key: Some(9),
            live_order_id: Some("order-1".into()),
        }])
        .unwrap();
        assert!(
            decode(&blob[..blob.len() - 1])
                .unwrap_err()
                .contains("ends early")
        );
        assert!(decode(&[]).unwrap_err().contains("ends early"));
        assert!(decode(&[2]).unwrap_err().contains("index format 2"));
        assert!(
            decode(&[1, 0x80])
                .unwrap_err()
                .contains("unknown index flags")
        );
        let long = StoredIndexEntry {
            order: 1,
            key: None,
            live_order_id: Some("x".repeat(MAX_ORDER_ID_BYTES + 1)),
        };
        assert!(encode(&[long]).is_err());
    }

    #[test]
    fn row_keys_sort_in_save_order_and_inside_the_index_range() {
        let keys = [0, 9, 10, 123_456, i64::MAX].map(index_row_key);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for key in &keys {
            assert!(key.as_str() > INDEX_ROW_PREFIX && key.as_str() < INDEX_ROWS_END);
        }
        // Every printable order id sorts after the index rows.
        assert!(INDEX_ROWS_END < "!");
    }
}
