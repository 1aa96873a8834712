#!/usr/bin/env bash
# The embedded default pipeline, no database server needed:
#   orders in SQLite --jdbc-source--> shop-orders --pii-mask--> shop-orders-masked --jdbc-sink--> orders in SQLite
# Run it against a running broker (`cargo run --release -- server` in another terminal):
#   ./examples/pipelines/sqlite.sh
# The broker and admin API default to 127.0.0.1:9092 / http://127.0.0.1:9644 (SLUICE_BROKERS /
# SLUICE_ADMIN_URL to change them); the databases go to ./pipeline-demo (DEMO_DIR to change it).
# Re-running replaces the demo's connectors, transform and databases.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

demo_dir="$(mkdir -p "${DEMO_DIR:-./pipeline-demo}" && cd "${DEMO_DIR:-./pipeline-demo}" && pwd)"
source_db="$demo_dir/source.db"
target_db="$demo_dir/target.db"
rm -f "$source_db" "$target_db"

step "A source database: 10,000 orders in $source_db"
python3 - "$source_db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, email TEXT NOT NULL, "
           "amount NUMERIC NOT NULL, updated_at TEXT NOT NULL)")
db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%f000', 'now'))",
               [(i, f"customer {i % 97}", f"c{i}@example.com", f"{i * 1.25:.2f}") for i in range(1, 10_001)])
db.commit()
PY

reset_pipeline
start_pipeline "sqlite:$source_db" "" "" "sqlite:$target_db" "" ""

count() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM orders').fetchone()[0])" "$1" 2>/dev/null || echo 0; }
wait_until "10,000 rows in the target" 120 '[ "$(count "$target_db")" = 10000 ]'

step "New rows and an update in the source"
python3 - "$source_db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executemany("INSERT INTO orders VALUES (?, 'late customer', ?, '9.99', strftime('%Y-%m-%dT%H:%M:%f000', 'now'))",
               [(i, f"c{i}@example.com") for i in range(10_001, 10_101)])
db.execute("UPDATE orders SET amount = '0.00', updated_at = strftime('%Y-%m-%dT%H:%M:%f000', 'now') WHERE id = 1")
db.commit()
PY
wait_until "10,100 rows in the target" 60 '[ "$(count "$target_db")" = 10100 ]'
python3 - "$target_db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT id, customer, email, amount FROM orders WHERE id IN (1, 2, 10100) ORDER BY id").fetchall()
print("\nThe target (emails masked by pii-mask on the way, the update applied as an upsert):")
for row in rows:
    print("  ", row)
assert rows[0][3] in ("0.00", 0, 0.0), rows
assert all(row[2] == "***" for row in rows), rows
PY
show_status
