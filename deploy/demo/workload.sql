-- One round of the demo's steady write workload on legacy (run repeatedly by demo.sh with
-- -v round=N). Inserts customers and orders, updates prices and statuses, deletes a line.
INSERT INTO customers (id, first_name, last_name, email, country, "straße")
SELECT :round * 10 + g, (ARRAY['Zoë','Jürgen','Åsa','Łukasz','Chloé'])[1 + g % 5],
       (ARRAY['Müller','Ødegård','Nuñez','Dvořák','Smith'])[1 + (g + :round) % 5],
       'User' || (:round * 10 + g) || '@Example.COM', (ARRAY['DE','FR','SE',NULL])[1 + g % 4],
       'Hauptstraße ' || g
FROM generate_series(1, 10) g
ON CONFLICT (id) DO NOTHING;
INSERT INTO products VALUES ('sku-' || (:round % 50), 'Produkt ☕ ' || (:round % 50),
       1 + (:round % 50) * 0.5, CASE WHEN :round % 3 = 0 THEN 'digital' ELSE 'physical' END)
ON CONFLICT (sku) DO UPDATE SET price = excluded.price + 0.01;
INSERT INTO orders (id, customer_id, status, total)
SELECT :round * 5 + g, 1 + (:round * 10 + g) % greatest(:round * 10, 1),
       CASE WHEN g = 5 THEN 'draft' ELSE 'paid' END, g * 9.99
FROM generate_series(1, 5) g
ON CONFLICT (id) DO NOTHING;
INSERT INTO order_items
SELECT :round * 5 + o, l, 'sku-' || ((o + l) % 50), l, 2.50 * l
FROM generate_series(1, 5) o, generate_series(1, 3) l
ON CONFLICT DO NOTHING;
UPDATE orders SET status = 'shipped' WHERE id = greatest(:round * 5 - 20, 1);
DELETE FROM order_items WHERE order_id = greatest(:round * 5 - 40, 1) AND line = 3;
