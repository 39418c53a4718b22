-- The legacy shop schema (database `app` on the legacy cluster). Idempotent.
CREATE TABLE IF NOT EXISTS public.customers (
    id          bigint PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    email       text,
    country     char(2),
    "straße"    text,            -- yes, a Unicode column name: legacy systems have them
    legacy_flags int DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.products (
    sku    text PRIMARY KEY,
    name   text NOT NULL,
    price  numeric(10,2) NOT NULL,
    kind   text NOT NULL CHECK (kind IN ('physical', 'digital'))
);
CREATE TABLE IF NOT EXISTS public.orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status      text NOT NULL,
    total       numeric(12,2) NOT NULL DEFAULT 0,
    placed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.order_items (
    order_id   bigint NOT NULL,
    line       int NOT NULL,
    sku        text NOT NULL,
    qty        int NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
