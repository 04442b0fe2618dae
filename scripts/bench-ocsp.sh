#!/usr/bin/env bash
# OCSP GET throughput of one release ca-server (SQLite) on its plain-HTTP
# listener: one host bootstrapped, its OCSP request made by `openssl ocsp
# -reqout`, then `ocspload` (tests/src/bin/ocspload.rs) drives GETs for
# SECONDS with CONCURRENCY keep-alive connections and reports requests/s and
# the signatures the server made meanwhile (ca_ocsp_signatures_total).
# Figures: BENCHMARKS.md. Usage: bash scripts/bench-ocsp.sh [SECONDS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=${1:-10}
CONC=${2:-8}
cargo build --release -q -p ca-server -p ca-client -p ca-tests --bin ca-server --bin ca-client --bin ocspload
work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
https_port=$(free_port); http_port=$(free_port)
bin=target/release
$bin/ca-server --data-dir "$work/data" --log warn serve --listen "127.0.0.1:$https_port" --hostname localhost \
  --http-listen "127.0.0.1:$http_port" --http-public-url "http://127.0.0.1:$http_port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$http_port/ca/root.crt" && break; sleep 0.1; done
fp=$($bin/ca-server --data-dir "$work/data" init 2>/dev/null)
$bin/ca-server --data-dir "$work/data" --log warn psk add bench.example.internal >"$work/psk"
$bin/ca-client bootstrap --server "https://localhost:$https_port" --fingerprint "$fp" \
  --hostname bench.example.internal --psk-file "$work/psk" --dir "$work/host" >/dev/null
openssl x509 -in "$work/data/intermediate.crt" -out "$work/int.pem"
openssl ocsp -issuer "$work/int.pem" -cert "$work/host/cert.pem" -no_nonce -reqout "$work/req.der" >/dev/null
echo "ocspload --seconds $SECONDS_RUN --concurrency $CONC (server: release, SQLite, 127.0.0.1)"
$bin/ocspload --url "http://127.0.0.1:$http_port/ocsp" --request "$work/req.der" \
  --seconds "$SECONDS_RUN" --concurrency "$CONC" \
  --metrics "https://localhost:$https_port" --root "$work/host/ca.pem"
echo "server CPU (utime+stime, s): $(awk '{print ($14+$15)/100}' /proc/$server_pid/stat)"
