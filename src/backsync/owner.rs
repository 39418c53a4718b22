//! The ownership function: which side owns one key of a table whose keys move to the new
//! store by share (1 % → 10 % → 100 %). One definition everybody can compute — this module,
//! the SQL functions `cutover.key_bucket` / `cutover.owner` (DDL in `crate::state`), `cutover
//! owner`, and the Python and Java snippets in docs/BACKSYNC.md — and a test holds them equal.
//!
//! ```text
//!   key columns' PostgreSQL text forms   5, eu
//!   canonical: <UTF-8 byte length>:<text> per column, concatenated      "1:52:eu"
//!   bucket = first 4 bytes of MD5(canonical), big-endian unsigned, mod 10000     0..9999
//!   owner  = new if bucket < share (in basis points: percent × 100), else legacy
//! ```
//!
//! Invariant: the bucket depends only on the key's text, never on the table, the process or
//! the version, so a key's owner changes only when its table's share crosses its bucket;
//! raising the share only moves keys from legacy to new (the set owned by new grows), and
//! every share step between two values moves exactly the keys whose buckets lie between.

use md5::{Digest, Md5};

/// Buckets per table: shares are set in basis points (0.01 %).
pub const BUCKETS: u32 = 10_000;

/// Which side owns a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Legacy,
    New,
}

impl Owner {
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Legacy => "legacy",
            Owner::New => "new",
        }
    }
}

/// The canonical text of a key: each column's text as `<UTF-8 byte length>:<text>`, in key
/// order, concatenated (unambiguous whatever the texts contain).
pub fn key_text<S: AsRef<str>>(parts: &[S]) -> String {
    let mut s = String::new();
    for p in parts {
        let p = p.as_ref();
        s.push_str(&p.len().to_string());
        s.push(':');
        s.push_str(p);
    }
    s
}

/// The key's bucket, 0..BUCKETS.
pub fn bucket<S: AsRef<str>>(parts: &[S]) -> u32 {
    let d = Md5::digest(key_text(parts).as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % BUCKETS
}

/// A share in percent (0..=100, two decimals) as basis points.
pub fn share_bp(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

/// The owner of a key under a share of `share_bp` basis points owned by the new store.
pub fn owner<S: AsRef<str>>(share_bp: u32, parts: &[S]) -> Owner {
    if bucket(parts) < share_bp {
        Owner::New
    } else {
        Owner::Legacy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values_pin_the_definition() {
        // Pinned so that any change of the definition is seen: the SQL, the CLI and the doc
        // snippets are held to the same values by tests/it/ownership.rs.
        assert_eq!(key_text(&["5", "eu"]), "1:52:eu");
        assert_eq!(key_text(&["a:b", ""]), "3:a:b0:");
        assert_eq!(key_text(&["é"]), "2:é");
        // Computed independently (Python's hashlib, PostgreSQL's md5()).
        assert_eq!(bucket(&["5"]), 3295);
        assert_eq!(bucket(&["5", "eu"]), 5571);
        assert_eq!(bucket(&["42"]), 3595);
        assert_eq!(bucket(&["é"]), 2388);
        assert_eq!(bucket(&["00000000-0000-0000-0000-000000000001"]), 9545);
        assert_eq!(owner(3296, &["5"]), Owner::New);
        assert_eq!(owner(3295, &["5"]), Owner::Legacy);
        assert_eq!(share_bp(10.0), 1000);
        assert_eq!(share_bp(0.01), 1);
        assert_eq!(share_bp(150.0), 10_000);
    }

    #[test]
    fn shares_split_keys_about_evenly() {
        let n = 20_000;
        let new = (0..n)
            .filter(|i| owner(share_bp(10.0), &[i.to_string()]) == Owner::New)
            .count();
        // 10 % of 20,000 = 2,000; a fair hash stays within a few percent of it.
        assert!(
            (1_800..=2_200).contains(&new),
            "{new} of {n} keys owned by new at 10 %"
        );
    }

    proptest! {
        #[test]
        fn zero_owns_nothing_and_full_owns_everything(parts in proptest::collection::vec(".{0,12}", 1..4)) {
            prop_assert_eq!(owner(0, &parts), Owner::Legacy);
            prop_assert_eq!(owner(BUCKETS, &parts), Owner::New);
        }

        #[test]
        fn raising_the_share_only_moves_keys_to_new(parts in proptest::collection::vec(".{0,12}", 1..4), a in 0u32..=10_000, b in 0u32..=10_000) {
            let (lo, hi) = (a.min(b), a.max(b));
            if owner(lo, &parts) == Owner::New {
                prop_assert_eq!(owner(hi, &parts), Owner::New);
            }
            prop_assert!(bucket(&parts) < BUCKETS);
        }

        #[test]
        fn the_canonical_text_is_unambiguous(a in proptest::collection::vec(".{0,6}", 1..4), b in proptest::collection::vec(".{0,6}", 1..4)) {
            if a != b {
                prop_assert_ne!(key_text(&a), key_text(&b));
            }
        }
    }
}
