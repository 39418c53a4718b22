//! Which columns of a table an event carries, and how much of each: `source.exclude_columns`
//! leaves columns out, `source.truncate_columns` cuts text and bytea values to a byte budget.
//! Pure (no I/O): planned once per Relation message, applied to every tuple.
//!
//! ```text
//!   Relation columns   id    title   body         blob
//!   plan               Keep  Keep    Cut(1024)    Exclude
//!   tuple ───────────▶ id ── title ── body[..1024] (blob never encoded, absent from the schema)
//! ```
//!
//! Invariant: key columns are always kept whole (the event key and per-row order depend on
//! them), and a cut text value is still valid UTF-8 (cut on a character boundary), a cut
//! bytea still valid hex. The trade-off is the user's: downstream stores the cut value, and
//! `verify`/`reconcile` see the difference.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::event::TableId;

/// What happens to one column of the Relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Keep,
    Exclude,
    /// Text cut to at most this many bytes (bytea: bytes of data).
    Cut(usize),
}

/// One column of a Relation, as the plan needs it.
pub struct ColumnIn<'a> {
    pub name: &'a str,
    pub type_oid: u32,
    pub key: bool,
}

/// Types whose text form can be cut without making it invalid: text, varchar, bpchar, name
/// (cut on a character boundary) and bytea (hex, cut on a byte).
const CUTTABLE: &[u32] = &[25, 1043, 1042, 19, BYTEA];
const BYTEA: u32 = 17;

/// The plan of one relation; `None` from [`plan`] when every column is kept whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    takes: Vec<Take>,
    bytea: Vec<bool>,
}

/// Plan the columns of `table` from its configured exclusions and cuts. Names that match no
/// column are ignored (a backlog may replay a relation from before the column existed); a
/// key column, or a cut of a type that cannot be cut, is a configuration error naming the
/// field.
pub fn plan(
    table: &TableId,
    columns: &[ColumnIn<'_>],
    exclude: Option<&Vec<String>>,
    truncate: Option<&BTreeMap<String, usize>>,
) -> Result<Option<Projection>> {
    if exclude.is_none_or(|x| x.is_empty()) && truncate.is_none_or(|t| t.is_empty()) {
        return Ok(None);
    }
    let mut takes = Vec::with_capacity(columns.len());
    for c in columns {
        let excluded = exclude.is_some_and(|x| x.iter().any(|n| n == c.name));
        let cut = truncate.and_then(|t| t.get(c.name).copied());
        let take = match (excluded, cut) {
            (true, _) if c.key => {
                return Err(Error::config(format!(
                    "source.exclude_columns.\"{table}\": {} is a key column of {table}; it cannot be left out",
                    c.name
                )))
            }
            (true, _) => Take::Exclude,
            (false, Some(_)) if c.key => {
                return Err(Error::config(format!(
                    "source.truncate_columns.\"{table}\".{}: a key column cannot be cut",
                    c.name
                )))
            }
            (false, Some(_)) if !CUTTABLE.contains(&c.type_oid) => {
                return Err(Error::config(format!(
                    "source.truncate_columns.\"{table}\".{}: only text, varchar, char, name and bytea columns can be cut (use exclude_columns to leave it out)",
                    c.name
                )))
            }
            (false, Some(n)) => Take::Cut(n),
            (false, None) => Take::Keep,
        };
        takes.push(take);
    }
    if takes.iter().all(|t| *t == Take::Keep) {
        return Ok(None);
    }
    Ok(Some(Projection {
        bytea: columns.iter().map(|c| c.type_oid == BYTEA).collect(),
        takes,
    }))
}

impl Projection {
    /// What happens to Relation column `i` (columns past the plan are kept).
    pub fn take(&self, i: usize) -> Take {
        self.takes.get(i).copied().unwrap_or(Take::Keep)
    }

    /// Whether Relation column `i` is carried by events.
    pub fn kept(&self, i: usize) -> bool {
        self.take(i) != Take::Exclude
    }

    /// Column `i`'s text form, cut to its budget: `(text, was_cut)`.
    pub fn cut<'a>(&self, i: usize, text: &'a str) -> (&'a str, bool) {
        match self.take(i) {
            Take::Cut(n) if self.bytea.get(i).copied().unwrap_or(false) => cut_bytea_hex(text, n),
            Take::Cut(n) => cut_text(text, n),
            _ => (text, false),
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn cut_text(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// A bytea in hex output (`\x0a0b…`) cut to at most `max` bytes of data.
pub fn cut_bytea_hex(s: &str, max: usize) -> (&str, bool) {
    let Some(hex) = s.strip_prefix("\\x") else {
        return cut_text(s, max);
    };
    let keep = max.saturating_mul(2);
    if hex.len() <= keep {
        return (s, false);
    }
    (&s[..2 + keep], true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cols() -> Vec<ColumnIn<'static>> {
        vec![
            ColumnIn {
                name: "id",
                type_oid: 23,
                key: true,
            },
            ColumnIn {
                name: "title",
                type_oid: 25,
                key: false,
            },
            ColumnIn {
                name: "blob",
                type_oid: 17,
                key: false,
            },
            ColumnIn {
                name: "doc",
                type_oid: 3802,
                key: false,
            },
        ]
    }

    fn t() -> TableId {
        TableId::new("public", "docs")
    }

    #[test]
    fn nothing_configured_is_no_plan() {
        assert_eq!(plan(&t(), &cols(), None, None).unwrap(), None);
        let other = BTreeMap::from([("nope".to_string(), 3usize)]);
        assert_eq!(plan(&t(), &cols(), None, Some(&other)).unwrap(), None);
    }

    #[test]
    fn exclusions_and_cuts_apply_per_column() {
        let x = vec!["doc".to_string(), "gone_since".to_string()];
        let c = BTreeMap::from([("title".to_string(), 4usize), ("blob".to_string(), 2)]);
        let p = plan(&t(), &cols(), Some(&x), Some(&c)).unwrap().unwrap();
        assert_eq!(
            (0..4).map(|i| p.take(i)).collect::<Vec<_>>(),
            vec![Take::Keep, Take::Cut(4), Take::Cut(2), Take::Exclude]
        );
        assert!(p.kept(0) && p.kept(1) && p.kept(2) && !p.kept(3));
        assert_eq!(p.cut(1, "héllo"), ("hél", true));
        assert_eq!(p.cut(2, "\\x0a0b0c"), ("\\x0a0b", true));
        assert_eq!(p.cut(2, "\\x0a"), ("\\x0a", false));
        assert_eq!(p.cut(0, "12345678"), ("12345678", false));
    }

    #[test]
    fn key_columns_and_uncuttable_types_are_refused_naming_the_field() {
        let x = vec!["id".to_string()];
        let e = plan(&t(), &cols(), Some(&x), None).unwrap_err().to_string();
        assert!(
            e.contains("source.exclude_columns.\"public.docs\"") && e.contains("key"),
            "{e}"
        );
        let c = BTreeMap::from([("id".to_string(), 4usize)]);
        let e = plan(&t(), &cols(), None, Some(&c)).unwrap_err().to_string();
        assert!(
            e.contains("source.truncate_columns.\"public.docs\".id"),
            "{e}"
        );
        let c = BTreeMap::from([("doc".to_string(), 4usize)]);
        let e = plan(&t(), &cols(), None, Some(&c)).unwrap_err().to_string();
        assert!(e.contains("only text"), "{e}");
    }

    proptest! {
        #[test]
        fn a_cut_is_the_longest_valid_prefix_within_the_budget(s in "\\PC{0,40}", max in 0usize..60) {
            let (cut, was) = cut_text(&s, max);
            prop_assert!(s.starts_with(cut));
            prop_assert!(cut.len() <= max || !was);
            prop_assert_eq!(was, s.len() > max);
            if was {
                // One more character would go over the budget.
                let next = s[cut.len()..].chars().next().unwrap();
                prop_assert!(cut.len() + next.len_utf8() > max);
            }
        }

        #[test]
        fn a_cut_bytea_keeps_whole_bytes(data in proptest::collection::vec(any::<u8>(), 0..40), max in 0usize..50) {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            let text = format!("\\x{hex}");
            let (cut, was) = cut_bytea_hex(&text, max);
            prop_assert!(cut.starts_with("\\x"));
            prop_assert_eq!((cut.len() - 2) % 2, 0);
            prop_assert_eq!((cut.len() - 2) / 2, data.len().min(max));
            prop_assert_eq!(was, data.len() > max);
        }
    }
}
