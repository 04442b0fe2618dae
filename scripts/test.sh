#!/usr/bin/env bash
# Runs every check and test of the project on a fresh Debian 12 machine:
# installs the system packages the tests use (needs root or sudo), then
# cargo fmt --check, clippy -D warnings, the ring-only check, the layering
# rules (scripts/check-layers.sh) and cargo test.
#
#   scripts/test.sh            everything (then a short fuzz run and the hostile-suite summary)
#   scripts/test.sh e2e::      only tests whose name matches (passed to cargo test; no fuzz run)
#   FUZZ_SECONDS=600 scripts/test.sh   a longer fuzz run per target (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the end-to-end tests drive. Keep in sync with docs/testing.md.
# faketime: client clock skew; sqlite3: fault injection into the live store;
# python3-venv: pkilint from PyPI; g++: libFuzzer for cargo fuzz;
# systemd: systemd-analyze for the example units (nothing is started);
# prometheus: scrapes /metrics; man-db: man pages; certbot, lego: ACME clients (e2e acme::).
PACKAGES=(openssl curl ca-certificates postgresql nginx haproxy puppet-agent faketime sqlite3 python3 python3-venv g++
  prometheus systemd man-db certbot lego)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # The packages' scripts would start system services (nginx on port 80 of
  # every address); the tests run their own daemons, so forbid starts
  # (policy-rc.d exit 101) while installing, unless a policy exists already.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
  fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$own_policy" ]; then $SUDO rm -f "$policy"; fi
fi

# pkilint (PyPI) in a virtualenv under target/, for the lint tests.
PKILINT=target/tools/pkilint
if [ ! -x "$PKILINT/bin/lint_pkix_cert" ]; then
  echo "==> installing pkilint into $PKILINT"
  python3 -m venv "$PKILINT"
  "$PKILINT/bin/pip" install -q --disable-pip-version-check pkilint
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> ring is the only crypto provider"
if cargo tree --workspace -i aws-lc-sys >/dev/null 2>&1; then
  echo "aws-lc-sys is in the dependency tree; keep ring the only provider" >&2
  exit 1
fi

echo "==> layering rules (ARCHITECTURE.md)"
scripts/check-layers.sh

echo "==> cargo test"
rm -f target/tmp/hostile-summary.txt
cargo build --workspace --bins
cargo test --workspace -- "$@"

if [ $# -eq 0 ]; then
  # Short fuzz run of each target (stable toolchain: RUSTC_BOOTSTRAP lets
  # cargo-fuzz pass its -Z sanitizer flags). Longer runs: docs/security.md.
  FUZZ_SECONDS=${FUZZ_SECONDS:-60}
  command -v cargo-fuzz >/dev/null || { echo "==> installing cargo-fuzz"; cargo install --locked cargo-fuzz; }
  for target in csr_decide http_body acme_decide; do
    echo "==> cargo fuzz run $target (${FUZZ_SECONDS}s)"
    mkdir -p "fuzz/corpus/$target"
    [ "$target" != http_body ] && cp policy/tests/fixtures/*.der policy/tests/fixtures/*.pem "fuzz/corpus/$target/"
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
       -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | tail -n 12)
  done
fi

summary=target/tmp/hostile-summary.txt
if [ -f "$summary" ]; then
  echo "==> hostile-input suite"
  cat "$summary"
fi
