#!/usr/bin/env bash
# A/B comparison of two ca-server builds: alternating runs on fresh stores,
# c=8 and c=64 keep-alive, each with the old build's loadgen; prints the
# medians' ratio, p99 and server CPU per certificate. Alternation keeps a
# noisy machine's drift out of the ratio, and the order flips every round
# (old then new, then new then old): on PostgreSQL the second server of a
# round runs on a cluster the first has just written to.
#
#   mkdir -p /tmp/ab/old /tmp/ab/new   # copy ca-server, ca-client, loadgen (release) of each build
#   ROUNDS=4 N=6000 scripts/bench-ab.sh
#   ENGINE=postgres ROUNDS=4 scripts/bench-ab.sh   # a throwaway PostgreSQL cluster on 127.0.0.1 (run as root)
set -euo pipefail
ROUNDS=${ROUNDS:-3}; N=${N:-8000}; CONCS=${CONCS:-8 64}; ENGINE=${ENGINE:-sqlite}
W=$(mktemp -d /tmp/abwork.XXXX); chmod 755 $W
OUT=/tmp/ab/results.jsonl; : > $OUT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
  if [ -n "${PGD:-}" ]; then runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGD" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
if [ "$ENGINE" = postgres ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  PGD=$W/pg; mkdir -p "$PGD"; chown postgres "$PGD"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGD" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  PGPORT=$(free_port)
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGD" -l "$PGD/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGD -c max_connections=200" start >/dev/null
fi
run() { # variant round
  local v=$1 r=$2 d=$W/$1-$2 port db=(); port=$(free_port)
  if [ "$ENGINE" = postgres ]; then
    "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE ca_${v}_$r"
    db=(--database-url "postgres://postgres@127.0.0.1:$PGPORT/ca_${v}_$r")
  fi
  /tmp/ab/$v/ca-server --data-dir $d "${db[@]}" init --name Bench >/dev/null
  /tmp/ab/$v/ca-server --data-dir $d "${db[@]}" --log warn serve --listen 127.0.0.1:$port --hostname localhost \
    --max-connections-per-address 4096 2>$d.log &
  local pid=$!
  until curl -sf --cacert $d/root.crt https://localhost:$port/healthz >/dev/null 2>&1; do sleep 0.01; done
  for c in $CONCS; do
    /tmp/ab/old/loadgen --label "$v c=$c r=$r" --json $OUT --server https://localhost:$port --root $d/root.crt --target ours \
      --requests $N --concurrency $c --mode keepalive --ca-server /tmp/ab/$v/ca-server --data-dir $d "${db[@]}" \
      --server-pid $pid --csr-cache $W/csrs-$c.json >/dev/null
  done
  kill $pid; wait $pid 2>/dev/null || true
  if [ "$ENGINE" = postgres ]; then
    # Every run's audit chain must verify.
    /tmp/ab/$v/ca-server --data-dir $d "${db[@]}" audit verify >/dev/null
  fi
  rm -rf $d
}
for r in $(seq 1 $ROUNDS); do
  if [ $((r % 2)) = 1 ]; then run old $r; run new $r; else run new $r; run old $r; fi
done
CONCS="$CONCS" python3 - <<'PY'
import json,collections,statistics,os
d=collections.defaultdict(list)
for l in open('/tmp/ab/results.jsonl'):
    j=json.loads(l); v,c,_=j['label'].split(' '); d[(v,c)].append(j)
for c in ['c='+x for x in os.environ['CONCS'].split()]:
    o=[x['certs_per_s'] for x in d[('old',c)]]; n=[x['certs_per_s'] for x in d[('new',c)]]
    print(c,'old',[round(x) for x in o],'new',[round(x) for x in n],'ratio of medians %.2f'%(statistics.median(n)/statistics.median(o)))
    for v in ['old','new']:
        print('  ',v,'p99',[round(x['p99_ms'],1) for x in d[(v,c)]],'cpu ms/cert',[round(x['server_cpu_ms_per_cert'] or 0,3) for x in d[(v,c)]])
PY
