#!/usr/bin/env bash
# Checks the layering rules of ARCHITECTURE.md ("Layers"); exits non-zero
# naming the first rule that is broken. Run from anywhere; scripts/test.sh
# runs it next to the ring-only check.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "layering rule broken: $*" >&2
  exit 1
}

# 1. Dependencies point one way: the binaries share `proto`, never each other;
#    `policy` stays pure. Normal dependencies only (tests may use anything).
tree() { cargo tree -e normal --prefix none -p "$1" | awk '{print $1}' | sort -u; }
ca_server=$(tree ca-server)
ca_client=$(tree ca-client)
policy=$(tree policy)
grep -qx ca-client <<<"$ca_server" && fail "ca-server depends on ca-client (cargo tree -e normal -p ca-server); share code through proto"
grep -qx ca-server <<<"$ca_client" && fail "ca-client depends on ca-server (cargo tree -e normal -p ca-client)"
grep -qxE 'ca-server|ca-client|proto' <<<"$policy" && fail "policy depends on ca-server, ca-client or proto (cargo tree -e normal -p policy); it must stay pure"

# 2. The CLI is the top of ca-server: nothing below it imports it back.
if hits=$(grep -rn 'crate::cli\b' ca-server/src --include='*.rs' | grep -v '^ca-server/src/cli/' | grep -v '^ca-server/src/main.rs:'); then
  echo "$hits" >&2
  fail "a module below cli/ names crate::cli (move what it needs down to where it belongs)"
fi

# 3. One write path per statement: each INSERT at most once per engine.
#    The texts live in store/mod.rs (insert_*_sqlite!, insert_*_pg!).
for table in certificates audit; do
  hits=$(grep -rn "INSERT INTO $table\b" ca-server/src --include='*.rs' || true)
  n=$(grep -c . <<<"$hits" || true)
  ((n <= 2)) || { echo "$hits" >&2; fail "INSERT INTO $table is written $n times in ca-server/src (at most once per engine: SQLite and PostgreSQL)"; }
  if grep -v '^ca-server/src/store/mod.rs:' <<<"$hits" | grep -q .; then
    echo "$hits" >&2
    fail "INSERT INTO $table outside store/mod.rs (use its insert function)"
  fi
done

# 4. Poisoned locks are handled, not turned into panics on request paths.
if hits=$(grep -rnE '\.(lock|read|write)\(\)\s*\.expect\(' ca-server/src --include='*.rs'); then
  echo "$hits" >&2
  fail "a lock .expect()s on poison in ca-server/src (use unwrap_or_else(PoisonError::into_inner) or a lock that cannot poison)"
fi
# The same across a line break (rustfmt splits long chains).
if hits=$(grep -rnE -A1 '\.(lock|read|write)\(\)$' ca-server/src --include='*.rs' | grep -E '^\S+-[0-9]+-\s*\.expect\('); then
  echo "$hits" >&2
  fail "a lock .expect()s on poison in ca-server/src (use unwrap_or_else(PoisonError::into_inner) or a lock that cannot poison)"
fi

# 5. Audit events, outcomes and certificate kinds are enums (store/kinds.rs)
#    with one string form each: no string literal stands in for one outside
#    unit tests (whose assertions keep the stored words).
if hits=$(for f in $(find ca-server/src -name '*.rs' ! -path '*/store/kinds.rs'); do
  awk -v f="$f" '/^mod tests/ { exit } { print f ":" FNR ":" $0 }' "$f"
done | grep -E '(event|outcome): "[a-z_]+"\.(into|to_owned|to_string)\(\)|\.(event|outcome) ?[!=]= ?"|\.kind ?[!=]= ?"(host|admin|server)"|kind: "(host|admin|server)"'); then
  echo "$hits" >&2
  fail "an audit event, outcome or certificate kind written as a string literal (use store::{Event, Outcome, CertKind})"
fi

echo "layering rules hold"
