//! Issue 14's "COPY into a staging table, then one set-based upsert" lever, measured against
//! the sink's statement (`INSERT … SELECT FROM unnest($1::text[], …) ON CONFLICT DO UPDATE`)
//! on the same rows, same connection, same target table: batches of `ROWS` rows shaped like
//! the bench's (`id bigint, qty int, price numeric(10,2), note text`), half new keys and half
//! updates, each batch in its own transaction as the sink does.
//!
//! `cargo run --release --example upsert_paths -- postgres://postgres@127.0.0.1:5434/app [batches] [rows]`

use std::time::Instant;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::NoTls;

type Rows = Vec<[String; 4]>;

fn batch(b: usize, rows: usize) -> Rows {
    // Half the keys were written by the previous batch (updates), half are new.
    let first = b * rows / 2;
    (first..first + rows)
        .map(|i| {
            [
                i.to_string(),
                (i % 100).to_string(),
                format!("{}.{}", i % 1000, i % 10),
                format!("order line {i} — straße ✓"),
            ]
        })
        .collect()
}

const UPDATE: &str = "qty = excluded.qty, price = excluded.price, note = excluded.note";

async fn unnest(c: &tokio_postgres::Client, rows: &Rows) -> Result<(), tokio_postgres::Error> {
    let stmt = c
        .prepare(&format!(
            "INSERT INTO upsert_paths.t (id, qty, price, note) \
             SELECT u.c0::bigint, u.c1::int, u.c2::numeric(10,2), u.c3::text \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(c0, c1, c2, c3) \
             ON CONFLICT (id) DO UPDATE SET {UPDATE}"
        ))
        .await?;
    let cols: Vec<Vec<Option<&str>>> = (0..4)
        .map(|j| rows.iter().map(|r| Some(r[j].as_str())).collect())
        .collect();
    c.batch_execute("BEGIN").await?;
    c.execute(&stmt, &[&cols[0], &cols[1], &cols[2], &cols[3]])
        .await?;
    c.batch_execute("COMMIT").await
}

/// COPY (text format) into a session-local staging table, one upsert from it, then empty it.
async fn staged(c: &tokio_postgres::Client, rows: &Rows) -> Result<(), tokio_postgres::Error> {
    let mut text = String::with_capacity(rows.len() * 64);
    for r in rows {
        for (j, v) in r.iter().enumerate() {
            if j > 0 {
                text.push('\t');
            }
            for ch in v.chars() {
                match ch {
                    '\\' => text.push_str("\\\\"),
                    '\t' => text.push_str("\\t"),
                    '\n' => text.push_str("\\n"),
                    '\r' => text.push_str("\\r"),
                    _ => text.push(ch),
                }
            }
        }
        text.push('\n');
    }
    c.batch_execute("BEGIN").await?;
    let sink = c
        .copy_in("COPY pg_temp.stage (c0, c1, c2, c3) FROM STDIN")
        .await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(text)).await?;
    sink.finish().await?;
    c.batch_execute(&format!(
        "INSERT INTO upsert_paths.t (id, qty, price, note) \
         SELECT c0::bigint, c1::int, c2::numeric(10,2), c3 FROM pg_temp.stage \
         ON CONFLICT (id) DO UPDATE SET {UPDATE}; TRUNCATE pg_temp.stage; COMMIT"
    ))
    .await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5434/app".into());
    let batches: usize = args.get(2).map_or(Ok(40), |s| s.parse())?;
    let rows: usize = args.get(3).map_or(Ok(5000), |s| s.parse())?;
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(
        "DROP SCHEMA IF EXISTS upsert_paths CASCADE; CREATE SCHEMA upsert_paths;
         CREATE TABLE upsert_paths.t (id bigint PRIMARY KEY, qty int, price numeric(10,2), note text);
         CREATE TEMP TABLE stage (c0 text, c1 text, c2 text, c3 text);",
    )
    .await?;
    let data: Vec<Rows> = (0..batches).map(|b| batch(b, rows)).collect();
    // Alternate the two paths round by round (each on its own key range) so drift in the
    // machine's load hits both alike.
    let (mut t_unnest, mut t_staged) = (0.0, 0.0);
    for round in 0..3 {
        c.batch_execute("TRUNCATE upsert_paths.t").await?;
        let t0 = Instant::now();
        for b in &data {
            unnest(&c, b).await?;
        }
        let u = t0.elapsed().as_secs_f64();
        c.batch_execute("TRUNCATE upsert_paths.t").await?;
        let t0 = Instant::now();
        for b in &data {
            staged(&c, b).await?;
        }
        let s = t0.elapsed().as_secs_f64();
        let n = (batches * rows) as f64;
        println!(
            "round {round}: unnest {:.0} rows/s, COPY + staged upsert {:.0} rows/s ({:.2}x)",
            n / u,
            n / s,
            u / s
        );
        if round > 0 {
            t_unnest += u;
            t_staged += s;
        }
    }
    println!(
        "rounds 1-2: COPY + staged upsert / unnest = {:.2}x ({} batches of {} rows)",
        t_unnest / t_staged,
        batches,
        rows
    );
    c.batch_execute("DROP SCHEMA upsert_paths CASCADE").await?;
    Ok(())
}
