#!/usr/bin/env bash
# Issuance benchmark: builds release binaries, then drives POST /v1/sign with
# the load generator (tests/src/bin/loadgen.rs) against ca-server on SQLite
# and on a throwaway PostgreSQL, and the same CSRs against Debian's
# `cfssl serve`, at several concurrencies, with keep-alive and with a new TLS
# connection per request. Prints a table per run, the our/cfssl ratios, the
# in-process crypto limit (cryptobench) and the scale figures, and appends
# every result as JSON lines to $OUT (default target/bench/results.jsonl).
#
#   scripts/bench.sh                 everything (about 10-15 minutes)
#   QUICK=1 scripts/bench.sh         fewer requests, no scale runs
#   ONLY=sqlite|postgres|cfssl|scale|crypto|flood|pkcs11 scripts/bench.sh
#   ONLY=soak scripts/bench.sh      one hour of c=64 on one store (SOAK_SECONDS, SOAK_ROUND)
#   ONLY=puppet scripts/bench.sh    Debian's Puppet Server 7 CA with a PSK autosign script
#
# ONLY=scale: a fresh store and one of 1,000,000 certificates with random
# serials and key hashes (+ audit rows, 100,000 live PSKs), measured in
# PAIRS (default 3) alternating pairs at c=8 and c=64 keep-alive.
# SCALE_KEEP=DIR keeps a copy of the big store.
#
# ONLY=pkcs11: c=8 keep-alive on SQLite with the CA keys as files, then in a
# SoftHSM2 token made in the work dir (issue 20).
#
# ONLY=flood (under a minute): 20,000 malformed CSRs from 127.0.0.2 over one
# HTTP/2 connection while 8 honest clients bootstrap from 127.0.0.1, after
# the same honest run alone; reports the honest p99 and the audit rows and
# store writes the flood caused.
#
# ONLY=puppet (a few minutes; installs puppetserver and a JVM): the
# incumbent this CA replaces. Puppet Server's own CA on 127.0.0.1 with a
# policy autosign script that signs a CSR only if its pp_preshared_key
# equals the PSK issued for that certname, and spends it; the load
# generator does what an agent does (PUT the CSR, GET the certificate) at
# c=1/8/64 keep-alive, after the same run against ca-server on SQLite.
#
# Figures and the exact command lines go to BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
OUT=${OUT:-$ROOT_DIR/target/bench/results.jsonl}
mkdir -p "$(dirname "$OUT")"
QUICK=${QUICK:-}
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

need_pkg() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return
  echo "==> installing $1"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$1" >/dev/null
}
if want cfssl; then need_pkg golang-cfssl; fi
need_pkg postgresql
need_pkg openssl
need_pkg curl

echo "==> building release binaries"
cargo build --release -q -p ca-server -p ca-client -p ca-tests --bins
BIN=$ROOT_DIR/target/release
WORK=$(mktemp -d /tmp/ca-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  if [ -n "${PGDATA_DIR:-}" ]; then runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

# Starts ca-server; sets SERVER_PID, SERVER_URL; records cold start to healthz.
start_ca() { # data_dir [database_url]
  local dir=$1 db=${2:-} port; port=$(free_port)
  local args=(--data-dir "$dir" --log "${CA_LOG:-warn}")
  [ -n "$db" ] && args+=(--database-url "$db")
  local t0; t0=$(now_ms)
  # The load generator is one address standing in for a fleet: lift the
  # per-address connection cap (64) that a real fleet never meets.
  "$BIN/ca-server" "${args[@]}" serve --listen "127.0.0.1:$port" --hostname localhost \
    --max-connections-per-address 4096 2>"$dir.log" &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  SERVER_URL="https://localhost:$port"
  until curl -sf --cacert "$dir/root.crt" "$SERVER_URL/healthz" >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir.log"; echo "ca-server died" >&2; exit 1; }
    sleep 0.005
  done
  COLD_START_MS=$(( $(now_ms) - t0 ))
}

loadgen() { # label target args...
  local label=$1; shift
  "$BIN/loadgen" --label "$label" --json "$OUT" "$@"
}

CONCS=(1 8 64 512)
if [ -n "$QUICK" ]; then N_KA=3000; N_NC=1500; N_C1=500; else N_KA=20000; N_NC=8000; N_C1=2000; fi
requests_for() { # conc mode
  if [ "$1" = 1 ]; then echo $N_C1; elif [ "$2" = keepalive ]; then echo $N_KA; else echo $N_NC; fi
}

run_matrix() { # engine-label data_dir [database_url]
  local engine=$1 dir=$2 db=${3:-}
  for mode in keepalive new-conn; do
    for c in "${CONCS[@]}"; do
      local n; n=$(requests_for "$c" "$mode")
      local dbargs=(); [ -n "$db" ] && dbargs=(--database-url "$db")
      loadgen "$engine c=$c $mode" --server "$SERVER_URL" --root "$dir/root.crt" --target ours \
        --requests "$n" --concurrency "$c" --mode "$mode" --ca-server "$BIN/ca-server" \
        --data-dir "$dir" "${dbargs[@]}" --server-pid "$SERVER_PID" \
        --csr-cache "$WORK/csrs-$mode-$c.json"
    done
  done
}

if want crypto; then
  echo "==> in-process crypto limit"
  "$BIN/cryptobench" 20000 | tee "$WORK/crypto.txt"
  tail -1 "$WORK/crypto.txt" | sed 's/^/{"label":"cryptobench","result":/; s/$/}/' >> "$OUT"
fi

if want sqlite || want cfssl; then
  echo "==> ca-server on SQLite"
  "$BIN/ca-server" --data-dir "$WORK/sqlite" init --name Bench >/dev/null
  start_ca "$WORK/sqlite"
  echo "cold start to first healthy /healthz: ${COLD_START_MS} ms"
  echo "{\"label\":\"cold start sqlite\",\"ms\":$COLD_START_MS}" >> "$OUT"
  run_matrix sqlite "$WORK/sqlite"
  # A booting host makes one request, but renewals and retries reconnect:
  # new connections that resume a TLS session (ticket) skip the key exchange.
  for c in "${CONCS[@]}"; do
    loadgen "sqlite c=$c new-conn resumed" --server "$SERVER_URL" --root "$WORK/sqlite/root.crt" --target ours \
      --requests "$(requests_for "$c" new-conn)" --concurrency "$c" --mode new-conn --tls-resumption \
      --ca-server "$BIN/ca-server" --data-dir "$WORK/sqlite" --server-pid "$SERVER_PID" \
      --csr-cache "$WORK/csrs-new-conn-$c.json"
  done

  echo "==> one ca-client bootstrap, wall time"
  PSK=$("$BIN/ca-server" --data-dir "$WORK/sqlite" psk add boot.bench.internal)
  printf %s "$PSK" > "$WORK/boot.psk"
  FP=$("$BIN/ca-server" --data-dir "$WORK/sqlite" init 2>/dev/null)
  t0=$(now_ms)
  "$BIN/ca-client" bootstrap --server "$SERVER_URL" --fingerprint "$FP" --hostname boot.bench.internal \
    --psk-file "$WORK/boot.psk" --dir "$WORK/boot" >/dev/null
  BOOT_MS=$(( $(now_ms) - t0 ))
  echo "ca-client bootstrap: ${BOOT_MS} ms"
  echo "{\"label\":\"bootstrap wall\",\"ms\":$BOOT_MS}" >> "$OUT"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
fi

if want cfssl; then
  echo "==> cfssl serve (same CSRs, same intermediate, no PSK check, no database)"
  CF=$WORK/cfssl; mkdir -p "$CF"
  openssl ec -in "$WORK/sqlite/intermediate.key" -out "$CF/ca-key.pem" 2>/dev/null
  cp "$WORK/sqlite/intermediate.crt" "$CF/ca.pem"
  # cfssl's TLS certificate: signed by our intermediate so the same pinned
  # root works. Made with openssl: `localhost` is the CA server's own name,
  # which no PSK may claim.
  mkdir -p "$CF/tls"
  openssl ecparam -name prime256v1 -genkey -noout -out "$CF/tls/key.pem"
  openssl req -new -key "$CF/tls/key.pem" -subj /CN=localhost -out "$CF/tls/req.pem"
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$CF/tls/ext"
  openssl x509 -req -in "$CF/tls/req.pem" -CA "$WORK/sqlite/intermediate.crt" -CAkey "$CF/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$CF/tls/ext" -out "$CF/tls/leaf.pem" 2>/dev/null
  cat "$CF/tls/leaf.pem" "$WORK/sqlite/intermediate.crt" > "$CF/tls/chain.pem"
  cat > "$CF/config.json" <<'JSON'
{"signing":{"default":{"expiry":"720h","usages":["digital signature","server auth","client auth"]}}}
JSON
  port=$(free_port)
  cfssl serve -address 127.0.0.1 -port "$port" -ca "$CF/ca.pem" -ca-key "$CF/ca-key.pem" \
    -config "$CF/config.json" -tls-cert "$CF/tls/chain.pem" -tls-key "$CF/tls/key.pem" -loglevel 5 \
    2>"$CF/log" &
  CF_PID=$!; PIDS+=("$CF_PID")
  until curl -s --cacert "$WORK/sqlite/root.crt" -o /dev/null "https://localhost:$port/api/v1/cfssl/health" 2>/dev/null; do
    kill -0 "$CF_PID" 2>/dev/null || { cat "$CF/log"; exit 1; }; sleep 0.05
  done
  for mode in keepalive new-conn; do
    for c in "${CONCS[@]}"; do
      n=$(requests_for "$c" "$mode")
      loadgen "cfssl c=$c $mode" --server "https://localhost:$port" --root "$WORK/sqlite/root.crt" \
        --target cfssl --requests "$n" --concurrency "$c" --mode "$mode" --server-pid "$CF_PID" \
        --csr-cache "$WORK/csrs-$mode-$c.json"
    done
  done
  for c in "${CONCS[@]}"; do
    loadgen "cfssl c=$c new-conn resumed" --server "https://localhost:$port" --root "$WORK/sqlite/root.crt" \
      --target cfssl --requests "$(requests_for "$c" new-conn)" --concurrency "$c" --mode new-conn \
      --tls-resumption --server-pid "$CF_PID" --csr-cache "$WORK/csrs-new-conn-$c.json"
  done
  kill "$CF_PID" 2>/dev/null || true
fi

# Starts a PostgreSQL cluster of our own (once); sets PGPORT.
start_pg() {
  [ -n "${PGDATA_DIR:-}" ] && return
  PGDATA_DIR=$WORK/pg; mkdir -p "$PGDATA_DIR"; chown postgres "$PGDATA_DIR"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  PGPORT=$(free_port)
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA_DIR -c max_connections=200" start >/dev/null
}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if want postgres; then
  echo "==> ca-server on PostgreSQL"
  start_pg
  "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE ca"
  DB="postgres://postgres@127.0.0.1:$PGPORT/ca"
  "$BIN/ca-server" --data-dir "$WORK/pgca" init --name Bench >/dev/null
  start_ca "$WORK/pgca" "$DB"
  echo "cold start (PostgreSQL): ${COLD_START_MS} ms"
  run_matrix postgres "$WORK/pgca" "$DB"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
fi

if want flood; then
  echo "==> flood: 20,000 malformed CSRs over HTTP/2 from 127.0.0.2 vs 8 honest clients (SQLite)"
  F=$WORK/flood
  N_HONEST=${N_HONEST:-2000}
  "$BIN/ca-server" --data-dir "$F" init --name Bench >/dev/null
  start_ca "$F"
  loadgen "flood baseline c=8" --server "$SERVER_URL" --root "$F/root.crt" --target ours \
    --requests "$N_HONEST" --concurrency 8 --mode keepalive --ca-server "$BIN/ca-server" \
    --data-dir "$F" --server-pid "$SERVER_PID"
  loadgen "flood 20000 c=8" --server "$SERVER_URL" --root "$F/root.crt" --target ours \
    --requests "$N_HONEST" --concurrency 8 --mode keepalive --ca-server "$BIN/ca-server" \
    --data-dir "$F" --server-pid "$SERVER_PID" --flood 20000 --flood-from 127.0.0.2 --flood-streams 32
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
fi

if want scale && [ -z "$QUICK" ]; then
  # A store that has run for a long time: 1,000,000 certificates (with their
  # audit rows) and 100,000 live PSKs, against a fresh store, in alternating
  # pairs (fresh, big, fresh, big, ...): this VM's noise is larger than the
  # difference measured, so one run of each says nothing. PAIRS (default 3);
  # SCALE_ENGINES (default "sqlite postgres").
  need_pkg sqlite3
  PAIRS=${PAIRS:-3}
  for engine in ${SCALE_ENGINES:-sqlite postgres}; do
  echo "==> scale: fresh store vs 1,000,000 certificates and 100,000 live PSKs ($engine)"
  S=$WORK/scale-$engine        # the big store's data dir
  F=$WORK/scale-$engine-fresh  # the fresh one's
  SDB=""; FDB=""; tag=scale
  if [ "$engine" = postgres ]; then
    start_pg; tag=scale-pg
    for db in scale_big scale_fresh; do "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE $db"; done
    SDB="postgres://postgres@127.0.0.1:$PGPORT/scale_big"; FDB="postgres://postgres@127.0.0.1:$PGPORT/scale_fresh"
  fi
  sargs=(--data-dir "$S"); [ -n "$SDB" ] && sargs+=(--database-url "$SDB")
  fargs=(--data-dir "$F"); [ -n "$FDB" ] && fargs+=(--database-url "$FDB")
  scale_runs() { # label dir [database_url]
    local dbargs=(); [ -n "${3:-}" ] && dbargs=(--database-url "$3")
    for c in 8 64; do
      loadgen "$tag $1 c=$c keepalive" --server "$SERVER_URL" --root "$2/root.crt" --target ours \
        --requests "$N_KA" --concurrency "$c" --mode keepalive --ca-server "$BIN/ca-server" \
        --data-dir "$2" "${dbargs[@]}" --server-pid "$SERVER_PID" --csr-cache "$WORK/csrs-keepalive-$c.json"
    done
  }
  "$BIN/ca-server" "${fargs[@]}" init --name Bench >/dev/null
  "$BIN/ca-server" "${sargs[@]}" init --name Bench >/dev/null
  FP=$("$BIN/ca-server" "${sargs[@]}" init 2>/dev/null)
  # One real certificate whose DER every synthetic row carries.
  PSK=$("$BIN/ca-server" "${sargs[@]}" psk add seed.scale.internal)
  printf %s "$PSK" > "$WORK/seed.psk"
  start_ca "$S" "$SDB"
  "$BIN/ca-client" bootstrap --server "$SERVER_URL" --fingerprint "$FP" --hostname seed.scale.internal \
    --psk-file "$WORK/seed.psk" --dir "$WORK/seed-$engine" >/dev/null
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  t0=$(now_ms)
  # Serials as pki/ca.rs makes them: 16 CSPRNG bytes, the first in
  # 0x40..=0x7f, stored as 32 lowercase hex digits; key and PSK hashes are
  # random 32 bytes. Random keys land on random B-tree pages, as real ones do
  # (sequential ones kept the indexes compact and hot).
  if [ "$engine" = sqlite ]; then
  sqlite3 "$S/ca.db" <<'SQL'
PRAGMA journal_mode = WAL;
BEGIN;
CREATE TEMP TABLE fill AS
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
SELECT i, printf('%02x', 64 + abs(random() % 64)) || lower(hex(randomblob(15))) AS serial FROM n;
INSERT INTO certificates (serial, hostname, kind, public_key_sha256, psk_hash, psk_expires_at,
                          not_before, not_after, der, issued_at)
SELECT serial, 'h' || i || '.old.scale.internal', 'host', randomblob(32), randomblob(32),
       unixepoch() + 3600, unixepoch() - 60, unixepoch() + 86400 * (1 + i % 60),
       (SELECT der FROM certificates WHERE hostname = 'seed.scale.internal'), unixepoch() - (i % 86400)
FROM fill ORDER BY i;
INSERT INTO audit (at, event, hostname, serial, outcome, peer)
SELECT unixepoch() - (i % 86400), 'sign', 'h' || i || '.old.scale.internal', serial, 'issued', '127.0.0.1'
FROM fill ORDER BY i;
DROP TABLE fill;
COMMIT;
SQL
  else
  "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -q -v ON_ERROR_STOP=1 scale_big <<'SQL'
BEGIN;
CREATE TEMP TABLE fill AS
SELECT i, to_hex(64 + floor(random() * 64)::int) || substr(md5(random()::text || i), 1, 30) AS serial
FROM generate_series(1, 1000000) i;
INSERT INTO certificates (serial, hostname, kind, public_key_sha256, psk_hash, psk_expires_at,
                          not_before, not_after, der, issued_at)
SELECT serial, 'h' || i || '.old.scale.internal', 'host',
       decode(md5(random()::text) || md5(random()::text), 'hex'),
       decode(md5(random()::text) || md5(random()::text), 'hex'),
       extract(epoch FROM now())::bigint + 3600, extract(epoch FROM now())::bigint - 60,
       extract(epoch FROM now())::bigint + 86400 * (1 + i % 60),
       (SELECT der FROM certificates WHERE hostname = 'seed.scale.internal'),
       extract(epoch FROM now())::bigint - (i % 86400)
FROM fill ORDER BY i;
INSERT INTO audit (at, event, hostname, serial, outcome, peer)
SELECT extract(epoch FROM now())::bigint - (i % 86400), 'sign', 'h' || i || '.old.scale.internal',
       serial, 'issued', '127.0.0.1'
FROM fill ORDER BY i;
DROP TABLE fill;
COMMIT;
VACUUM ANALYZE;
SQL
  fi
  seq 1 100000 | sed 's/.*/p&.live.scale.internal/' \
    | "$BIN/ca-server" "${sargs[@]}" --log warn psk batch --ttl 24h >/dev/null
  if [ "$engine" = sqlite ]; then
    CERTS=$(sqlite3 "$S/ca.db" 'SELECT count(*) FROM certificates')
    BYTES=$(stat -c %s "$S/ca.db")
  else
    CERTS=$("$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc 'SELECT count(*) FROM certificates' scale_big)
    BYTES=$("$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc "SELECT pg_database_size('scale_big')")
  fi
  echo "filled the store in $(( $(now_ms) - t0 )) ms: $CERTS certificates, $BYTES bytes"
  echo "{\"label\":\"$tag store\",\"certificates\":$CERTS,\"bytes\":$BYTES}" >> "$OUT"
  for pair in $(seq 1 "$PAIRS"); do
    echo "-- pair $pair/$PAIRS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    start_ca "$F" "$FDB"
    scale_runs "fresh #$pair" "$F" "$FDB"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    start_ca "$S" "$SDB"
    echo "cold start with 1 M certificates ($engine): ${COLD_START_MS} ms"
    echo "{\"label\":\"cold start $engine 1M certs\",\"ms\":$COLD_START_MS}" >> "$OUT"
    scale_runs "1M #$pair" "$S" "$SDB"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  done

  # The admin reads an operator runs on a big store (process start included).
  t0=$(now_ms)
  n=$("$BIN/ca-server" "${sargs[@]}" --log warn cert list --expiring 7d | wc -l)
  ms=$(( $(now_ms) - t0 ))
  echo "cert list --expiring 7d on the big store ($engine): $ms ms, $n lines"
  echo "{\"label\":\"cert list --expiring 7d 1M $engine\",\"ms\":$ms,\"lines\":$n}" >> "$OUT"
  t0=$(now_ms)
  n=$("$BIN/ca-server" "${sargs[@]}" --log warn audit --since 1h | wc -l)
  ms=$(( $(now_ms) - t0 ))
  echo "audit --since 1h on the big store ($engine): $ms ms, $n lines"
  echo "{\"label\":\"audit --since 1h 1M $engine\",\"ms\":$ms,\"lines\":$n}" >> "$OUT"
  done
  S=$WORK/scale-sqlite
  if [ -d "$S" ]; then # the SQLite store, when it was measured

  # SCALE_KEEP=DIR: a copy of the big store as measured, for profiling.
  if [ -n "${SCALE_KEEP:-}" ]; then rm -rf "$SCALE_KEEP"; cp -a "$S" "$SCALE_KEEP"; fi

  echo "==> CRL with 100,000 revoked entries"
  sqlite3 "$S/ca.db" "UPDATE certificates SET revoked_at = unixepoch(), revocation_reason = 'keyCompromise'
                      WHERE serial IN (SELECT serial FROM certificates WHERE hostname LIKE '%.old.scale.internal' LIMIT 100000);
                      UPDATE crl_state SET revocation_seq = revocation_seq + 1;"
  t0=$(now_ms)
  "$BIN/ca-server" --data-dir "$S" --log warn crl --sign --out "$WORK/crl.pem"
  CRL_MS=$(( $(now_ms) - t0 ))
  ENTRIES=$(openssl crl -in "$WORK/crl.pem" -noout -text | grep -c "Serial Number:")
  echo "ca-server crl --sign (process start, store read, intermediate + Puppet + root CRLs signed and published): ${CRL_MS} ms, $ENTRIES entries in the first CRL's text"
  echo "{\"label\":\"crl 100k revoked\",\"ms\":$CRL_MS,\"entries\":$ENTRIES}" >> "$OUT"
  fi
fi

if [ "$ONLY" = soak ]; then
  # Issue 22: one SQLite store under c=64 keep-alive load for SOAK_SECONDS
  # (default 3600), in rounds of SOAK_ROUND requests. Each round's PSKs and
  # CSRs are made before it, off the clock (the server idles meanwhile); a
  # sampler records the server's RSS, the WAL and the database file every
  # second throughout. Only with ONLY=soak: it takes an hour.
  #
  # The PSKs go into the store as `psk batch` would store them (the SHA-256
  # of a random base64url secret), by SQL, without its psk_added audit rows:
  # `psk batch` takes ~60 s per 100,000, which would leave the server idle
  # most of the hour.
  need_pkg sqlite3
  SOAK_SECONDS=${SOAK_SECONDS:-3600}
  SOAK_ROUND=${SOAK_ROUND:-100000}
  echo "==> soak: c=64 keep-alive for ${SOAK_SECONDS} s, rounds of ${SOAK_ROUND} (SQLite)"
  D=$WORK/soak
  "$BIN/ca-server" --data-dir "$D" --log warn init >/dev/null
  start_ca "$D"
  t_start=$(date +%s)
  SAMPLES=$WORK/soak-samples.txt
  ( while kill -0 "$SERVER_PID" 2>/dev/null; do
      printf '%s %s %s %s\n' "$(( $(date +%s) - t_start ))" \
        "$(awk '/^VmRSS/{print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)" \
        "$(stat -c %s "$D/ca.db-wal" 2>/dev/null || echo 0)" "$(stat -c %s "$D/ca.db")"
      sleep 1
    done >> "$SAMPLES" ) &
  PIDS+=("$!")
  soak_psks() { # ROUND: SOAK_ROUND live PSKs in the store, HOST<TAB>PSK in $WORK/soak-psks.txt
    python3 - "$D/ca.db" "$WORK/soak-psks.txt" "$1" "$SOAK_ROUND" <<'PY'
import base64, hashlib, os, sqlite3, sys, time
db, out, rnd, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
now = int(time.time())
rows, lines = [], []
for i in range(n):
    host = f"s{i}-r{rnd}.soak.internal"
    psk = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    rows.append((host, hashlib.sha256(psk.encode()).digest(), "[]", now, now + 7200))
    lines.append(f"{host}\t{psk}\n")
with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.writelines(lines)
con = sqlite3.connect(db, timeout=30)
with con:
    con.executemany("INSERT INTO psks (hostname, psk_hash, allowed_sans, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)", rows)
con.close()
PY
  }
  round=0
  while [ $(( $(date +%s) - t_start )) -lt "$SOAK_SECONDS" ]; do
    round=$((round + 1))
    echo "-- round $round at $(( $(date +%s) - t_start )) s"
    soak_psks "$round"
    loadgen "soak round $round" --server "$SERVER_URL" --root "$D/root.crt" --target ours \
      --requests "$SOAK_ROUND" --concurrency 64 --mode keepalive --ca-server "$BIN/ca-server" \
      --data-dir "$D" --server-pid "$SERVER_PID" --no-verify --psk-file "$WORK/soak-psks.txt"
    echo "{\"label\":\"soak end of round\",\"round\":$round,\"t_s\":$(( $(date +%s) - t_start ))}" >> "$OUT"
  done
  rm -f "$WORK/soak-psks.txt"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  sleep 1.5 # the sampler's last line
  CERTS=$(sqlite3 "$D/ca.db" 'SELECT count(*) FROM certificates')
  AUDITS=$(sqlite3 "$D/ca.db" 'SELECT count(*) FROM audit')
  echo "soak store: $CERTS certificates, $AUDITS audit rows, $(du -h "$D/ca.db" | cut -f1)"
  start_ca "$D"
  echo "cold start with the soak store: ${COLD_START_MS} ms"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  t0=$(now_ms); n=$("$BIN/ca-server" --data-dir "$D" --log warn cert list --expiring 7d | wc -l); ms1=$(( $(now_ms) - t0 ))
  t0=$(now_ms); m=$("$BIN/ca-server" --data-dir "$D" --log warn audit --since 1h | wc -l); ms2=$(( $(now_ms) - t0 ))
  echo "on the soak store: cert list --expiring 7d $ms1 ms ($n lines), audit --since 1h $ms2 ms ($m lines)"
  python3 - "$OUT" "$SAMPLES" "$CERTS" "$(stat -c %s "$D/ca.db")" "$COLD_START_MS" "$ms1" "$ms2" <<'PY' | tee -a "$OUT"
import json, sys
out, samples, certs, size, cold, ms1, ms2 = sys.argv[1:8]
rows = [json.loads(l) for l in open(out) if l.strip()]
# This soak's rows: from the last "soak round 1" on.
start = max(i for i, r in enumerate(rows) if r.get("label") == "soak round 1")
rounds, ends = [], {}
for r in rows[start:]:
    if r.get("label", "").startswith("soak round "):
        rounds.append(r)
    elif r.get("label") == "soak end of round":
        ends[r["round"]] = r["t_s"]
total = max(ends.values())
def rate(sel):
    ok = sum(r["ok"] for r in sel); wall = sum(r["wall_s"] for r in sel)
    return ok / wall if wall else 0.0
first = [r for i, r in enumerate(rounds, 1) if ends.get(i, total) <= 600]
last = [r for i, r in enumerate(rounds, 1) if ends.get(i, 0) >= total - 600 + 1 and i > 1]
s = [tuple(int(x) for x in l.split()) for l in open(samples) if len(l.split()) == 4]
rss_after_10 = [x[1] for x in s if 600 <= x[0] <= 660]
rss_end = [x[1] for x in s if x[0] >= total - 60 and x[1] > 0]
print(json.dumps({
    "label": "soak summary", "seconds": total, "rounds": len(rounds),
    "certificates": int(certs), "errors": sum(r["errors"] for r in rounds),
    "first_10_min_certs_per_s": round(rate(first)), "last_10_min_certs_per_s": round(rate(last)),
    "last_over_first": round(rate(last) / rate(first), 3) if rate(first) else None,
    "p99_ms_first_round": rounds[0]["p99_ms"], "p99_ms_last_round": rounds[-1]["p99_ms"],
    "rss_kib_at_10_min": max(rss_after_10, default=0), "rss_kib_at_end": max(rss_end, default=0),
    "rss_kib_max": max((x[1] for x in s), default=0),
    "wal_bytes_max": max((x[2] for x in s), default=0),
    "db_bytes": int(size), "bytes_per_certificate": round(int(size) / int(certs)),
    "cold_start_ms": int(cold), "cert_list_expiring_7d_ms": int(ms1), "audit_since_1h_ms": int(ms2),
}))
PY
fi

if want pkcs11; then
  # Issue 20: the same load against file keys and against keys in a SoftHSM2
  # token (one made here, in the work dir), c=8 keep-alive, SQLite.
  need_pkg softhsm2
  echo "==> PKCS#11 token (SoftHSM2) against file keys"
  N_P11=${N_P11:-$N_KA}
  H=$WORK/softhsm; mkdir -p "$H/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$H/tokens" > "$H/softhsm2.conf"
  echo bench-pin-1234 > "$H/pin"; chmod 600 "$H/pin"
  SOFTHSM2_CONF=$H/softhsm2.conf softhsm2-util --init-token --free --label bench \
    --pin bench-pin-1234 --so-pin bench-so-5678 >/dev/null
  for keys in files pkcs11; do
    D=$WORK/keys-$keys
    if [ "$keys" = pkcs11 ]; then
      export SOFTHSM2_CONF=$H/softhsm2.conf CA_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so \
        CA_PKCS11_TOKEN=bench CA_PKCS11_PIN_FILE=$H/pin
    fi
    "$BIN/ca-server" --data-dir "$D" --log warn init >/dev/null
    start_ca "$D"
    loadgen "keys $keys c=8 keepalive" --server "$SERVER_URL" --root "$D/root.crt" --target ours \
      --requests "$N_P11" --concurrency 8 --mode keepalive --ca-server "$BIN/ca-server" \
      --data-dir "$D" --server-pid "$SERVER_PID" --csr-cache "$WORK/csrs-keepalive-8.json"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    unset SOFTHSM2_CONF CA_PKCS11_MODULE CA_PKCS11_TOKEN CA_PKCS11_PIN_FILE
  done
fi

if [ "$ONLY" = puppet ]; then
  need_pkg puppetserver
  N_PUP=${N_PUP:-1000}
  echo "==> ca-server on SQLite, the Puppet row's concurrencies"
  "$BIN/ca-server" --data-dir "$WORK/pup-ours" init --name Bench >/dev/null
  start_ca "$WORK/pup-ours"
  for c in 1 8 64; do
    loadgen "puppet-row ours c=$c keepalive" --server "$SERVER_URL" --root "$WORK/pup-ours/root.crt" \
      --target ours --requests "$N_PUP" --concurrency "$c" --mode keepalive \
      --ca-server "$BIN/ca-server" --data-dir "$WORK/pup-ours" --server-pid "$SERVER_PID"
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

  echo "==> Puppet Server $(dpkg-query -W -f='${Version}' puppetserver), its CA, PSK autosign script"
  P=$WORK/puppet; port=$(free_port)
  mkdir -p "$P/conf.d" "$P/etc" "$P/var" "$P/run" "$P/log" "$P/code" "$P/psks"
  cat > "$P/etc/puppet.conf" <<CONF
[main]
certname = localhost
dns_alt_names = localhost
ssldir = $P/ssl
vardir = $P/var
logdir = $P/log
rundir = $P/run
codedir = $P/code
[server]
cadir = $P/ca
autosign = $P/autosign
CONF
  # Policy autosigning: Puppet runs this per CSR with the certname as $1 and
  # the CSR on stdin; exit 0 signs. The PSK file holds the hex of the
  # extension's DER, as asn1parse prints it; a match spends it.
  cat > "$P/autosign" <<SCRIPT
#!/bin/sh
f="$P/psks/\$1"
[ -f "\$f" ] || exit 1
got=\$(openssl req -outform DER | openssl asn1parse -inform DER |
  awk '/:1\.3\.6\.1\.4\.1\.34380\.1\.1\.4\$/ { getline; sub(/.*\[HEX DUMP\]:/, ""); print; exit }')
[ -n "\$got" ] && [ "\$got" = "\$(cat "\$f")" ] && rm "\$f"
SCRIPT
  chmod 755 "$P/autosign"
  cat > "$P/conf.d/puppetserver.conf" <<CONF
jruby-puppet: {
    ruby-load-path: [/usr/lib/puppetserver/ruby/vendor_ruby]
    gem-home: $P/var/jruby-gems
    gem-path: [\${jruby-puppet.gem-home}, "/usr/lib/puppetserver/vendored-jruby-gems"]
    server-conf-dir: $P/etc
    server-code-dir: $P/code
    server-var-dir: $P/var
    server-run-dir: $P/run
    server-log-dir: $P/log
}
http-client: {}
profiler: {}
CONF
  printf 'webserver: {\n  client-auth: want\n  ssl-host: 127.0.0.1\n  ssl-port: %s\n}\n' "$port" > "$P/conf.d/webserver.conf"
  # Our CSRs carry the hostname as a DNS SAN too.
  printf 'certificate-authority: {\n  allow-subject-alt-names: true\n}\n' > "$P/conf.d/ca.conf"
  printf 'global: { logging-config: %s/logback.xml }\n' "$P" > "$P/conf.d/global.conf"
  cat > "$P/logback.xml" <<CONF
<configuration>
  <appender name="F" class="ch.qos.logback.core.FileAppender">
    <file>$P/log/puppetserver.log</file>
    <encoder><pattern>%d %-5p [%c{2}] %m%n</pattern></encoder>
  </appender>
  <root level="warn"><appender-ref ref="F"/></root>
</configuration>
CONF
  cp /etc/puppet/puppetserver/conf.d/{auth,web-routes,metrics}.conf "$P/conf.d/"
  # The packaged JVM settings (1 GiB heap), as /etc/default/puppetserver has them.
  t0=$(now_ms)
  (cd /usr/share/puppetserver && exec java -Xms1g -Xmx1g \
    -Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger -Djruby.lib=/usr/share/jruby/lib \
    -jar /usr/share/puppetserver/puppetserver.jar --config "$P/conf.d" \
    --bootstrap-config /etc/puppet/puppetserver/services.d) >"$P/stdout.log" 2>&1 &
  PUP_PID=$!; PIDS+=("$PUP_PID")
  # Ready when its CA (made on first start) answers the status endpoint.
  until [ -f "$P/ca/ca_crt.pem" ] && curl -sf --cacert "$P/ca/ca_crt.pem" \
      "https://localhost:$port/status/v1/simple" 2>/dev/null | grep -q running; do
    kill -0 "$PUP_PID" 2>/dev/null || { cat "$P/stdout.log" "$P/log/puppetserver.log"; echo "puppetserver died" >&2; exit 1; }
    sleep 0.2
  done
  PUP_START_MS=$(( $(now_ms) - t0 ))
  echo "puppetserver start to a running status: ${PUP_START_MS} ms"
  echo "{\"label\":\"cold start puppetserver\",\"ms\":$PUP_START_MS}" >> "$OUT"
  for c in 1 8 64; do
    # The autosign script's processes are children: the CPU column counts the JVM only.
    loadgen "puppet-row puppetserver c=$c keepalive" --server "https://localhost:$port" \
      --root "$P/ca/ca_crt.pem" --target puppet --puppet-psk-dir "$P/psks" --requests "$N_PUP" \
      --concurrency "$c" --mode keepalive --server-pid "$PUP_PID"
  done
  kill "$PUP_PID"; wait "$PUP_PID" 2>/dev/null || true
fi

echo
echo "==> summary (certificates/s; ratios ours/cfssl at the same concurrency and mode)"
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
latest = {}
for r in rows:
    if "certs_per_s" in r:
        latest[r["label"]] = r
for label in sorted(latest):
    r = latest[label]
    print(f'{label:<26} {r["certs_per_s"]:>8.0f}/s  p50 {r["p50_ms"]:6.2f}  p99 {r["p99_ms"]:7.2f} ms  errors {r["errors"]}  '
          f'cpu {r.get("server_cpu_ms_per_cert") or 0:.3f} ms/cert  rss {r.get("server_peak_rss_mib") or 0:.1f} MiB  '
          f'anon {r.get("server_peak_rss_anon_mib") or 0:.1f} MiB')
for tag in ("scale", "scale-pg"):
  for c in (8, 64):
    ratios, pair = [], 1
    while (a := latest.get(f"{tag} fresh #{pair} c={c} keepalive")) and (b := latest.get(f"{tag} 1M #{pair} c={c} keepalive")):
        ratios.append(b["certs_per_s"] / a["certs_per_s"])
        pair += 1
    if ratios:
        med = sorted(ratios)[len(ratios) // 2]
        print(f'{tag} c={c}: 1M certificates + 100k PSKs at {med:.2f}x the fresh store '
              f'(median of {len(ratios)} alternating pairs: {", ".join(f"{r:.2f}" for r in ratios)})')
for c in (1, 8, 64):
    ours = latest.get(f"puppet-row ours c={c} keepalive")
    pup = latest.get(f"puppet-row puppetserver c={c} keepalive")
    if ours and pup and pup["certs_per_s"]:
        print(f'ratio ours/puppetserver c={c} keepalive {ours["certs_per_s"]/pup["certs_per_s"]:.0f}x')
for label, r in sorted(latest.items()):
    if not label.startswith("sqlite "):
        continue
    cf = latest.get("cfssl " + label[len("sqlite "):])
    if cf and cf["certs_per_s"]:
        print(f'ratio sqlite/cfssl {label[len("sqlite "):]:<18} {r["certs_per_s"]/cf["certs_per_s"]:.2f}x')
PY
