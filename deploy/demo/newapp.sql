-- The new contract (database `newapp` on the new cluster), fed by the `newstore` sink through
-- the mapping in deploy/config/cutover.local.toml. Idempotent.
CREATE SCHEMA IF NOT EXISTS crm;
CREATE SCHEMA IF NOT EXISTS catalog;
CREATE SCHEMA IF NOT EXISTS sales;
CREATE TABLE IF NOT EXISTS crm.clients (
    client_id  bigint PRIMARY KEY,
    full_name  text NOT NULL,
    email      text,
    country    text NOT NULL,
    street     text,
    source     text NOT NULL,
    created_at timestamptz
);
CREATE TABLE IF NOT EXISTS catalog.physical_products (sku text PRIMARY KEY, title text NOT NULL, price_cents bigint NOT NULL);
CREATE TABLE IF NOT EXISTS catalog.digital_products (sku text PRIMARY KEY, title text NOT NULL, price_cents bigint NOT NULL);
CREATE TABLE IF NOT EXISTS sales.orders (
    order_id  bigint PRIMARY KEY,
    client_id bigint NOT NULL,
    status    text NOT NULL,
    total     numeric(12,2) NOT NULL,
    placed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sales.order_lines (
    order_id   bigint NOT NULL,
    line_no    int NOT NULL,
    sku        text NOT NULL,
    quantity   int NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
