#!/usr/bin/env bash
# Runs every check and test of the project on a fresh Debian 12 machine:
# installs the system packages the tests use (needs root or sudo), then
# cargo fmt --check, clippy -D warnings, the ring-only check and cargo test.
#
#   scripts/test.sh            everything
#   scripts/test.sh e2e::      only tests whose name matches (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the end-to-end tests drive. Keep in sync with docs/testing.md.
PACKAGES=(openssl curl ca-certificates postgresql nginx haproxy puppet-agent prometheus systemd man-db)

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

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> ring is the only crypto provider"
if cargo tree --workspace -i aws-lc-sys >/dev/null 2>&1; then
  echo "aws-lc-sys is in the dependency tree; keep ring the only provider" >&2
  exit 1
fi

echo "==> cargo test"
cargo build --workspace --bins
cargo test --workspace -- "$@"
