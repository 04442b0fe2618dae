#!/usr/bin/env bash
# A/B comparison of two ca-server builds: alternating runs (old, new, old,
# new, ...) on fresh SQLite stores, c=8 and c=64 keep-alive, each with the
# old build's loadgen; prints the medians' ratio, p99 and server CPU per
# certificate. Alternation keeps a noisy machine's drift out of the ratio.
#
#   mkdir -p /tmp/ab/old /tmp/ab/new   # copy ca-server, ca-client, loadgen (release) of each build
#   ROUNDS=3 N=6000 scripts/bench-ab.sh
set -euo pipefail
ROUNDS=${ROUNDS:-3}; N=${N:-8000}; CONCS=${CONCS:-8 64}
W=$(mktemp -d /tmp/abwork.XXXX); chmod 755 $W
OUT=/tmp/ab/results.jsonl; : > $OUT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { # variant round
  local v=$1 r=$2 d=$W/$1-$2 port; port=$(free_port)
  /tmp/ab/$v/ca-server --data-dir $d init --name Bench >/dev/null
  /tmp/ab/$v/ca-server --data-dir $d --log warn serve --listen 127.0.0.1:$port --hostname localhost \
    --max-connections-per-address 4096 2>$d.log &
  local pid=$!
  until curl -sf --cacert $d/root.crt https://localhost:$port/healthz >/dev/null 2>&1; do sleep 0.01; done
  for c in $CONCS; do
    /tmp/ab/old/loadgen --label "$v c=$c r=$r" --json $OUT --server https://localhost:$port --root $d/root.crt --target ours \
      --requests $N --concurrency $c --mode keepalive --ca-server /tmp/ab/$v/ca-server --data-dir $d --server-pid $pid \
      --csr-cache $W/csrs-$c.json >/dev/null
  done
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf $d
}
for r in $(seq 1 $ROUNDS); do run old $r; run new $r; done
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
rm -rf $W
