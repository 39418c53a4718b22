//! Topic names: one function per kind of topic, so capture, sinks, the monitor and the tools
//! always agree on them.
//!
//! ```text
//!   <prefix>.<schema>.<table>   change events of one table (capture; the back-sync's capture
//!                               uses the prefix `<prefix>.back`)
//!   <prefix>.dlq.capture        rows capture could not encode
//!   <prefix>.dlq.<sink>         events sink <sink> could not apply
//! ```

use crate::event::TableId;

/// Topic name for a table: `<prefix>.<schema>.<table>`; characters Kafka does not allow in
/// topic names become `_`.
pub fn for_table(prefix: &str, table: &TableId) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{prefix}.{}.{}", clean(&table.schema), clean(&table.name))
}

/// Whether a change event of `table` belongs on `topic`: a sink applies an event only to the
/// table its topic is for, so producing to one captured topic cannot write another table.
pub fn carries(prefix: &str, topic: &str, table: &TableId) -> bool {
    for_table(prefix, table) == topic
}

/// The capture dead-letter topic: rows the codec cannot represent.
pub fn capture_dlq(prefix: &str) -> String {
    format!("{prefix}.dlq.capture")
}

/// The dead-letter topic of a sink.
pub fn sink_dlq(prefix: &str, sink: &str) -> String {
    format!("{prefix}.dlq.{sink}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            for_table("p", &TableId::new("public", "order items")),
            "p.public.order_items"
        );
        assert_eq!(capture_dlq("p"), "p.dlq.capture");
        let t = TableId::new("public", "orders");
        assert!(carries("p", "p.public.orders", &t));
        assert!(!carries("p", "p.public.customers", &t));
        assert!(!carries("p.back", "p.public.orders", &t));
        assert_eq!(sink_dlq("p", "mirror"), "p.dlq.mirror");
    }
}
