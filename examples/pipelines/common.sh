# What the pipeline examples share: the `sluice` binary, steps and waits, and the pipeline itself
# (source connector -> pii-mask transform -> sink connector). Sourced by sqlite.sh, postgres.sh, mariadb.sh.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SLUICE="${SLUICE:-$repo/target/release/sluice}"
if [ ! -x "$SLUICE" ]; then
    echo "No sluice binary at $SLUICE: run \`cargo build --release\` (or \`cargo run --release -- server\`) first." >&2
    exit 1
fi
export NO_COLOR=1

step() { printf '\n==> %s\n' "$*"; }

# wait_until DESCRIPTION SECONDS CONDITION
wait_until() {
    local deadline=$((SECONDS + $2))
    until eval "$3"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "Timed out after $2 s waiting for $1." >&2
            "$SLUICE" connector status orders-source >&2 || true
            "$SLUICE" connector status orders-sink >&2 || true
            "$SLUICE" transform status orders-mask >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    echo "    $1 (after ${SECONDS}s)"
}

if ! "$SLUICE" connector list >/dev/null 2>&1; then
    echo "No broker answers at ${SLUICE_ADMIN_URL:-http://127.0.0.1:9644}: start one with \`cargo run --release -- server\`." >&2
    exit 1
fi

# Removes what an earlier run created (connectors keep their positions under their name: reset them too).
reset_pipeline() {
    for name in orders-source orders-sink; do
        if "$SLUICE" connector status "$name" >/dev/null 2>&1; then
            "$SLUICE" connector stop "$name" >/dev/null
            "$SLUICE" connector offsets "$name" --reset >/dev/null
            "$SLUICE" connector delete "$name" >/dev/null
        fi
    done
    "$SLUICE" transform delete orders-mask >/dev/null 2>&1 || true
    for topic in shop-orders shop-orders-masked shop-orders-dlq; do
        "$SLUICE" topic delete "$topic" >/dev/null 2>&1 || true
    done
}

# start_pipeline SOURCE_URL SOURCE_USER SOURCE_PASSWORD TARGET_URL TARGET_USER TARGET_PASSWORD
start_pipeline() {
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    step "Topics, then the pii-mask transform (first-party, in the broker's registry) between them"
    for topic in shop-orders shop-orders-masked shop-orders-dlq; do
        "$SLUICE" topic create "$topic" --partitions 3 >/dev/null
    done
    "$SLUICE" transform deploy --module pii-mask --name orders-mask --input-topic shop-orders \
        --output-topic shop-orders-masked --config fields=email

    step "The source connector (jdbc-source, $here/orders-source.json)"
    local source_args=(--config "connection.url=$1")
    [ -n "$2" ] && source_args+=(--config "connection.user=$2" --config "connection.password=$3")
    "$SLUICE" connector create orders-source --file "$here/orders-source.json" "${source_args[@]}"

    step "The sink connector (jdbc-sink, $here/orders-sink.json)"
    local sink_args=(--config "connection.url=$4")
    [ -n "$5" ] && sink_args+=(--config "connection.user=$5" --config "connection.password=$6")
    "$SLUICE" connector create orders-sink --file "$here/orders-sink.json" "${sink_args[@]}"
}

show_status() {
    step "Status"
    "$SLUICE" connector list
    "$SLUICE" transform list
    echo
    echo "Inspect:  $SLUICE connector status orders-source | offsets orders-source | config orders-sink"
    echo "Reset:    $SLUICE connector stop orders-source && $SLUICE connector offsets orders-source --reset && $SLUICE connector resume orders-source"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Runs a command as `nobody` when we are root (PostgreSQL's programs refuse to run as root).
as_db_user() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }

DB_USER=sluice
DB_PASSWORD=demo-password

# Starts a throwaway PostgreSQL cluster (wal_level=logical) in $1 from the server binaries, on a free
# port; sets PG_PORT and PG_BIN, and stops it when the script exits.
start_postgres() {
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$PG_BIN" ]; then
        echo "No PostgreSQL server binaries (apt-get install postgresql), or give SOURCE_URL and TARGET_URL." >&2
        exit 1
    fi
    local dir="$1"
    rm -rf "$dir" && mkdir -p "$dir" && chmod 755 "$dir"
    printf '%s' "$DB_PASSWORD" > "$dir/pw"
    if [ "$(id -u)" = 0 ]; then
        chown -R nobody "$dir"
        if ! runuser -u nobody -- test -x "$dir"; then
            echo "PostgreSQL refuses to run as root, so it runs as nobody, who cannot reach $dir;" \
                 "set DEMO_DIR to a directory under /tmp, e.g. DEMO_DIR=/tmp/pipeline-demo." >&2
            exit 1
        fi
    fi
    as_db_user "$PG_BIN/initdb" -D "$dir/data" -U "$DB_USER" -A scram-sha-256 -E UTF8 --no-sync --pwfile="$dir/pw" >/dev/null
    PG_PORT="$(free_port)"
    as_db_user "$PG_BIN/pg_ctl" -D "$dir/data" -w -l "$dir/postgres.log" \
        -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical" start >/dev/null
    trap 'as_db_user "$PG_BIN/pg_ctl" -D "'"$dir"'/data" -m fast -w stop >/dev/null 2>&1 || true' EXIT
    echo "    PostgreSQL on 127.0.0.1:$PG_PORT (data in $dir)"
}

# psql URL SQL...
psql_at() { local url="$1"; shift; "${PG_BIN:-/usr/bin}/psql" "$url" -v ON_ERROR_STOP=1 -qAt "$@"; }

# Starts a throwaway MariaDB server in $1 on a free port with the user sluice and databases shop and
# warehouse; sets MARIA_PORT and MARIA_SOCKET, and stops it when the script exits.
start_mariadb() {
    local dir="$1" user_flag=()
    rm -rf "$dir" && mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && user_flag=(--user=root)
    mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal --skip-test-db "${user_flag[@]}" >/dev/null
    MARIA_PORT="$(free_port)"
    MARIA_SOCKET="$dir/mysqld.sock"
    /usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$MARIA_SOCKET" --port="$MARIA_PORT" \
        --bind-address=127.0.0.1 --skip-name-resolve --skip-log-bin --pid-file="$dir/mariadb.pid" \
        --log-error="$dir/mariadb.log" "${user_flag[@]}" >/dev/null 2>&1 &
    local pid=$!
    trap 'kill '"$pid"' 2>/dev/null || true; wait '"$pid"' 2>/dev/null || true' EXIT
    local deadline=$((SECONDS + 60))
    until mariadb --no-defaults --socket="$MARIA_SOCKET" -u root -e 'SELECT 1' >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && { echo "MariaDB did not start:" >&2; cat "$dir/mariadb.log" >&2; exit 1; }
        sleep 0.3
    done
    mariadb --no-defaults --socket="$MARIA_SOCKET" -u root -e "CREATE USER '$DB_USER'@'%' IDENTIFIED BY '$DB_PASSWORD'; \
        GRANT ALL ON *.* TO '$DB_USER'@'%'; CREATE DATABASE shop; CREATE DATABASE warehouse;"
    echo "    MariaDB on 127.0.0.1:$MARIA_PORT (data in $dir)"
}

# mariadb_at DATABASE SQL
mariadb_at() { mariadb --no-defaults --socket="$MARIA_SOCKET" -u root -N -B "$1" -e "$2"; }
