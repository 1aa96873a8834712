#!/usr/bin/env bash
# orders in PostgreSQL --jdbc-source--> shop-orders --pii-mask--> shop-orders-masked --jdbc-sink--> PostgreSQL
# Run it against a running broker (`cargo run --release -- server` in another terminal):
#   ./examples/pipelines/postgres.sh
# It starts a throwaway PostgreSQL cluster (databases `shop` and `warehouse`) from the server binaries
# in ./pipeline-demo/postgres and stops it at the end (KEEP=1 keeps it running, to look around).
# Re-running replaces the demo's connectors, transform and databases.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"
demo_dir="$(mkdir -p "${DEMO_DIR:-./pipeline-demo}" && cd "${DEMO_DIR:-./pipeline-demo}" && pwd)"

step "A PostgreSQL server"
start_postgres "$demo_dir/postgres"
[ "${KEEP:-0}" = 1 ] && trap - EXIT
base="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT"
psql_at "$base/postgres" -c "CREATE DATABASE shop" -c "CREATE DATABASE warehouse"

step "A source database: 100,000 orders in shop.orders"
psql_at "$base/shop" -c "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, email TEXT NOT NULL,
    amount NUMERIC(12, 2) NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())" \
    -c "INSERT INTO orders (customer, email, amount) SELECT 'customer ' || (i % 97), 'c' || i || '@example.com', i * 1.25
        FROM generate_series(1, 100000) i"

step "The target table in warehouse (jdbc-sink binds each value by its column's type: NUMERIC stays exact)"
psql_at "$base/warehouse" -c "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT, email TEXT, amount NUMERIC(12, 2),
    updated_at TIMESTAMPTZ)"

reset_pipeline
url="postgres://127.0.0.1:$PG_PORT"
start_pipeline "$url/shop" "$DB_USER" "$DB_PASSWORD" "$url/warehouse" "$DB_USER" "$DB_PASSWORD"

count() { psql_at "$base/warehouse" -c "SELECT COUNT(*) FROM orders" 2>/dev/null || echo 0; }
wait_until "100,000 rows in warehouse.orders" 300 '[ "$(count)" = 100000 ]'

step "New rows and an update in the source"
psql_at "$base/shop" -c "INSERT INTO orders (customer, email, amount) SELECT 'late', 'late' || i || '@example.com', 9.99
    FROM generate_series(1, 100) i" -c "UPDATE orders SET amount = 0, updated_at = now() WHERE id = 1"
wait_until "100,100 rows in warehouse.orders" 60 '[ "$(count)" = 100100 ]'
wait_until "the update" 60 '[ "$(psql_at "$base/warehouse" -c "SELECT amount = 0 FROM orders WHERE id = 1")" = t ]'
echo
echo "The target (emails masked by pii-mask on the way):"
psql_at "$base/warehouse" -c "SELECT id, customer, email, amount FROM orders WHERE id IN (1, 2, 100100) ORDER BY id"
[ "$(psql_at "$base/warehouse" -c "SELECT COUNT(*) FROM orders WHERE email <> '***'")" = 0 ]
show_status
