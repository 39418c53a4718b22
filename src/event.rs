//! The shared vocabulary: LSNs, operations, table ids, and the total order of events.
//!
//! Every change event carries `(commit_lsn, seq)`: the commit LSN of its source transaction and
//! its 0-based position inside that transaction. The pair orders all events of one source
//! totally, and an event re-sent after a capture restart carries the same pair, so any
//! downstream can recognise and drop it.

use std::fmt;

/// A PostgreSQL WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The operation of a change event (Debezium letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    Truncate,
    /// A row read by backfill (snapshot).
    Read,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
            Op::Read => "r",
        }
    }
}

/// A table, schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_text_form() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!(Lsn::parse("nope").is_none());
        assert!(Lsn::parse("1/FFFFFFFFF").is_none());
        assert!(Lsn(1) < Lsn(2));
    }
}

/// The two databases of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    New,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }
}
