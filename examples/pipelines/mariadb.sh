#!/usr/bin/env bash
# orders in MariaDB --jdbc-source--> shop-orders --pii-mask--> shop-orders-masked --jdbc-sink--> MariaDB
# Run it against a running broker (`cargo run --release -- server` in another terminal):
#   ./examples/pipelines/mariadb.sh
# It starts a throwaway MariaDB server (databases `shop` and `warehouse`) from the server binaries in
# ./pipeline-demo/mariadb and stops it at the end (KEEP=1 keeps it running, to look around).
# Re-running replaces the demo's connectors, transform and databases.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"
demo_dir="$(mkdir -p "${DEMO_DIR:-./pipeline-demo}" && cd "${DEMO_DIR:-./pipeline-demo}" && pwd)"

step "A MariaDB server"
start_mariadb "$demo_dir/mariadb"
[ "${KEEP:-0}" = 1 ] && trap - EXIT

step "A source database: 100,000 orders in shop.orders"
mariadb_at shop "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(64) NOT NULL,
    email VARCHAR(128) NOT NULL, amount DECIMAL(12, 2) NOT NULL, updated_at DATETIME(6) NOT NULL DEFAULT NOW(6));
    INSERT INTO orders (customer, email, amount) SELECT CONCAT('customer ', seq % 97), CONCAT('c', seq, '@example.com'),
    seq * 1.25 FROM seq_1_to_100000;"

step "The target table in warehouse (jdbc-sink binds each value by its column's type: DECIMAL stays exact)"
mariadb_at warehouse "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer VARCHAR(64), email VARCHAR(128),
    amount DECIMAL(12, 2), updated_at DATETIME(6))"

reset_pipeline
url="mysql://127.0.0.1:$MARIA_PORT"
start_pipeline "$url/shop" "$DB_USER" "$DB_PASSWORD" "$url/warehouse" "$DB_USER" "$DB_PASSWORD"

count() { mariadb_at warehouse "SELECT COUNT(*) FROM orders" 2>/dev/null || echo 0; }
wait_until "100,000 rows in warehouse.orders" 300 '[ "$(count)" = 100000 ]'

step "New rows and an update in the source"
mariadb_at shop "INSERT INTO orders (customer, email, amount) SELECT 'late', CONCAT('late', seq, '@example.com'), 9.99
    FROM seq_1_to_100; UPDATE orders SET amount = 0, updated_at = NOW(6) WHERE id = 1;"
wait_until "100,100 rows in warehouse.orders" 60 '[ "$(count)" = 100100 ]'
wait_until "the update" 60 '[ "$(mariadb_at warehouse "SELECT amount = 0 FROM orders WHERE id = 1")" = 1 ]'
echo
echo "The target (emails masked by pii-mask on the way):"
mariadb_at warehouse "SELECT id, customer, email, amount FROM orders WHERE id IN (1, 2, 100100) ORDER BY id"
[ "$(mariadb_at warehouse "SELECT COUNT(*) FROM orders WHERE email <> '***'")" = 0 ]
show_status
