//! Identifiers and literals as SQL text, through `postgres_protocol::escape` (the escaping
//! libpq's `PQescapeIdentifier`/`PQescapeLiteral` do). Values travel as bind parameters
//! wherever the protocol allows; these are for the places it does not (DDL, `simple_query`).

use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::event::TableId;

/// `name` as a quoted identifier: `"Odd ""name"""`.
pub fn quote(name: &str) -> String {
    escape_identifier(name)
}

/// `"schema"."table"`.
pub fn qualified(t: &TableId) -> String {
    format!("{}.{}", quote(&t.schema), quote(&t.name))
}

/// `value` as a string literal, correct whatever `standard_conforming_strings` says (a
/// backslash makes it an `E'...'` literal).
pub fn literal(value: &str) -> String {
    escape_literal(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_escaped() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(
            qualified(&TableId::new("Sales", "order items")),
            "\"Sales\".\"order items\""
        );
        assert_eq!(literal("o'brien"), "'o''brien'");
        assert_eq!(literal("a\\b").trim(), "E'a\\\\b'");
    }
}
