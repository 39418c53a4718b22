//! A decoder for the `pgoutput` logical replication protocol (version 1, text tuples).
//!
//! Written from the PostgreSQL "Logical Replication Message Formats" documentation. It never
//! panics on any input: every read is bounds-checked and a malformed message is an
//! [`ErrorKind::Data`] error naming the message type and what was truncated (the fuzz target in
//! `fuzz/` holds it to that).
//!
//! | tag | message  | fields |
//! |-----|----------|--------|
//! | `B` | Begin    | final LSN, commit time, xid |
//! | `C` | Commit   | flags, commit LSN, end LSN, commit time |
//! | `O` | Origin   | commit LSN, origin name |
//! | `R` | Relation | id, namespace, name, replica identity, columns (flags, name, type oid, typmod) |
//! | `Y` | Type     | oid, namespace, name |
//! | `I` | Insert   | relation id, new tuple |
//! | `U` | Update   | relation id, optional old key (`K`) or old row (`O`), new tuple |
//! | `D` | Delete   | relation id, old key (`K`) or old row (`O`) |
//! | `T` | Truncate | relation ids, options (cascade, restart identity) |
//! | `M` | Message  | flags, LSN, prefix, content |

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_ts_us: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts_us: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        rel_id: u32,
        new: Tuple,
    },
    Update {
        rel_id: u32,
        /// Old key (`K`, replica identity default/index) or whole old row (`O`, FULL).
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    },
    Delete {
        rel_id: u32,
        old: (OldKind, Tuple),
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        rel_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    Key,
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value that did not change: the server did not send it.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

pub type Tuple = Vec<Datum>;

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Data,
            format!(
                "pgoutput {} message: {detail} (at byte {})",
                self.what, self.pos
            ),
        )
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let buf: &'a [u8] = self.buf.as_ref();
        if self.pos.checked_add(n).is_none_or(|end| end > buf.len()) {
            return Err(self.err(format!(
                "truncated: wanted {n} more bytes, have {}",
                buf.len() - self.pos
            )));
        }
        let s = &buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn lsn(&mut self) -> Result<Lsn> {
        Ok(Lsn(self.i64()? as u64))
    }
    fn cstr(&mut self) -> Result<String> {
        let buf: &'a [u8] = self.buf.as_ref();
        let rest = &buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("string without NUL terminator"))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|e| self.err(format!("string is not UTF-8: {e}")))?
            .to_string();
        self.pos += end + 1;
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
    }
    fn tuple(&mut self) -> Result<Tuple> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err(format!("negative column count {n}")));
        }
        let mut cols = Vec::with_capacity((n as usize).min(1600));
        for _ in 0..n {
            let d = match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' | b'b' => {
                    let kind = self.buf[self.pos - 1];
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.err(format!("negative value length {len}")));
                    }
                    let v = self.bytes(len as usize)?;
                    if kind == b't' {
                        Datum::Text(v)
                    } else {
                        Datum::Binary(v)
                    }
                }
                other => {
                    return Err(self.err(format!("unknown tuple value kind {:?}", other as char)))
                }
            };
            cols.push(d);
        }
        Ok(cols)
    }
    fn old_kind(&mut self, tag: u8) -> Result<OldKind> {
        match tag {
            b'K' => Ok(OldKind::Key),
            b'O' => Ok(OldKind::Full),
            other => Err(self.err(format!("expected 'K' or 'O', got {:?}", other as char))),
        }
    }
    fn expect(&mut self, want: u8) -> Result<()> {
        let got = self.u8()?;
        if got != want {
            return Err(self.err(format!(
                "expected {:?}, got {:?}",
                want as char, got as char
            )));
        }
        Ok(())
    }
}

/// Decode one pgoutput message (the payload of an XLogData record).
///
/// Long on purpose: one arm per protocol message type, in the order of PostgreSQL's "Logical
/// Replication Message Formats" page, so each arm can be read against its table there.
pub fn decode(buf: &Bytes) -> Result<Message> {
    let Some(&tag) = buf.first() else {
        return Err(Error::new(ErrorKind::Data, "pgoutput: empty message"));
    };
    let what = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => {
            return Err(Error::new(
                ErrorKind::Data,
                format!(
                    "pgoutput: unknown message type {:?} (0x{other:02x})",
                    other as char
                ),
            ))
        }
    };
    let mut r = Reader { buf, pos: 1, what };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_ts_us: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts_us: r.i64()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 {
                return Err(r.err(format!("negative column count {n}")));
            }
            let mut columns = Vec::with_capacity((n as usize).min(1600));
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let rel_id = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                rel_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel_id = r.u32()?;
            let t = r.u8()?;
            let old = if t == b'N' {
                None
            } else {
                let kind = r.old_kind(t)?;
                let tuple = r.tuple()?;
                r.expect(b'N')?;
                Some((kind, tuple))
            };
            Message::Update {
                rel_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel_id = r.u32()?;
            let t = r.u8()?;
            let kind = r.old_kind(t)?;
            Message::Delete {
                rel_id,
                old: (kind, r.tuple()?),
            }
        }
        b'T' => {
            let n = r.i32()?;
            if n < 0 {
                return Err(r.err(format!("negative relation count {n}")));
            }
            let opts = r.u8()?;
            let mut rel_ids = Vec::with_capacity((n as usize).min(65_536));
            for _ in 0..n {
                rel_ids.push(r.u32()?);
            }
            Message::Truncate {
                cascade: opts & 1 != 0,
                restart_identity: opts & 2 != 0,
                rel_ids,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.cstr()?;
            let len = r.i32()?;
            if len < 0 {
                return Err(r.err(format!("negative content length {len}")));
            }
            Message::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len as usize)?,
            }
        }
        _ => unreachable!("tag checked above"),
    };
    Ok(msg)
}

/// Encoders for building pgoutput messages in tests and the fuzz corpus.
pub mod encode {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn tuple(out: &mut Vec<u8>, t: &Tuple) {
        out.extend_from_slice(&(t.len() as i16).to_be_bytes());
        for d in t {
            match d {
                Datum::Null => out.push(b'n'),
                Datum::UnchangedToast => out.push(b'u'),
                Datum::Text(b) | Datum::Binary(b) => {
                    out.push(if matches!(d, Datum::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    /// Encode any message (inverse of [`decode`]).
    ///
    /// Long on purpose: one arm per message type, mirroring `decode` arm for arm.
    pub fn message(m: &Message) -> Bytes {
        let mut o = Vec::new();
        match m {
            Message::Begin {
                final_lsn,
                commit_ts_us,
                xid,
            } => {
                o.push(b'B');
                o.extend_from_slice(&final_lsn.0.to_be_bytes());
                o.extend_from_slice(&commit_ts_us.to_be_bytes());
                o.extend_from_slice(&xid.to_be_bytes());
            }
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts_us,
            } => {
                o.push(b'C');
                o.push(*flags);
                o.extend_from_slice(&commit_lsn.0.to_be_bytes());
                o.extend_from_slice(&end_lsn.0.to_be_bytes());
                o.extend_from_slice(&commit_ts_us.to_be_bytes());
            }
            Message::Origin { commit_lsn, name } => {
                o.push(b'O');
                o.extend_from_slice(&commit_lsn.0.to_be_bytes());
                cstr(&mut o, name);
            }
            Message::Relation(r) => {
                o.push(b'R');
                o.extend_from_slice(&r.id.to_be_bytes());
                cstr(&mut o, &r.namespace);
                cstr(&mut o, &r.name);
                o.push(r.replica_identity);
                o.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
                for c in &r.columns {
                    o.push(c.key as u8);
                    cstr(&mut o, &c.name);
                    o.extend_from_slice(&c.type_oid.to_be_bytes());
                    o.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            Message::Type {
                oid,
                namespace,
                name,
            } => {
                o.push(b'Y');
                o.extend_from_slice(&oid.to_be_bytes());
                cstr(&mut o, namespace);
                cstr(&mut o, name);
            }
            Message::Insert { rel_id, new } => {
                o.push(b'I');
                o.extend_from_slice(&rel_id.to_be_bytes());
                o.push(b'N');
                tuple(&mut o, new);
            }
            Message::Update { rel_id, old, new } => {
                o.push(b'U');
                o.extend_from_slice(&rel_id.to_be_bytes());
                if let Some((k, t)) = old {
                    o.push(if *k == OldKind::Key { b'K' } else { b'O' });
                    tuple(&mut o, t);
                }
                o.push(b'N');
                tuple(&mut o, new);
            }
            Message::Delete { rel_id, old } => {
                o.push(b'D');
                o.extend_from_slice(&rel_id.to_be_bytes());
                o.push(if old.0 == OldKind::Key { b'K' } else { b'O' });
                tuple(&mut o, &old.1);
            }
            Message::Truncate {
                cascade,
                restart_identity,
                rel_ids,
            } => {
                o.push(b'T');
                o.extend_from_slice(&(rel_ids.len() as i32).to_be_bytes());
                o.push((*cascade as u8) | ((*restart_identity as u8) << 1));
                for id in rel_ids {
                    o.extend_from_slice(&id.to_be_bytes());
                }
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                o.push(b'M');
                o.push(*transactional as u8);
                o.extend_from_slice(&lsn.0.to_be_bytes());
                cstr(&mut o, prefix);
                o.extend_from_slice(&(content.len() as i32).to_be_bytes());
                o.extend_from_slice(content);
            }
        }
        Bytes::from(o)
    }
}

#[cfg(test)]
mod tests;
