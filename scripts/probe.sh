#!/usr/bin/env bash
# Blackbox end-to-end probe of a running ca-server, for an operator to run
# every few minutes (cron, a systemd timer, or a monitoring agent's script
# check) on a machine where `ca-server` reaches the CA's store (the CA host):
#
#   1. psk      ca-server psk add PROBE_HOST --ttl 5m
#   2. issue    ca-client bootstrap against the server (pinned fingerprint)
#   3. verify   openssl verify: the chain leads to the root
#   4. crl      the served CRL verifies, is current, and does not list the cert
#   5. revoke   ca-server revoke SERIAL --reason superseded
#   6. listed   the served CRL lists the serial (waits for the re-signing)
#
# Exit 0 and one "probe: OK ..." line, or a "probe: FAIL <step>: ..." line on
# stderr and the step's exit code: 2 usage, 3 psk, 4 issue, 5 verify, 6 crl,
# 7 revoke, 8 listed. The PSK never leaves this process's private temp dir.
#
# Usage: scripts/probe.sh --server URL [--host NAME] [--no-revoke]
#                         [--crl-wait SECONDS] [--fingerprint sha256:HEX]
# The store and data dir come from ca-server's usual settings (CA_CONFIG,
# CA_DATA_DIR, CA_DATABASE_URL or --config in CA_SERVER_ARGS). Binaries:
# CA_SERVER_BIN (default ca-server), CA_CLIENT_BIN (default ca-client).
#
# Every probe leaves one certificate in the store, and (unless --no-revoke)
# one entry on the CRL until the certificate expires: see docs/operations.md
# ("The probe") for how often to run which mode.
set -uo pipefail

SERVER=""
HOST="ca-probe.invalid"
REVOKE=1
CRL_WAIT=40
FINGERPRINT=""
CA_SERVER_BIN="${CA_SERVER_BIN:-ca-server}"
CA_CLIENT_BIN="${CA_CLIENT_BIN:-ca-client}"
read -r -a SERVER_ARGS <<<"${CA_SERVER_ARGS:-}"

usage() {
  sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case "$1" in
    --server) SERVER="${2:-}"; shift 2 ;;
    --host) HOST="${2:-}"; shift 2 ;;
    --no-revoke) REVOKE=0; shift ;;
    --crl-wait) CRL_WAIT="${2:-}"; shift 2 ;;
    --fingerprint) FINGERPRINT="${2:-}"; shift 2 ;;
    -h | --help) usage ;;
    *) echo "probe: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$SERVER" ] || { echo "probe: --server URL is required" >&2; usage; }
[[ "$CRL_WAIT" =~ ^[0-9]+$ ]] || { echo "probe: --crl-wait takes whole seconds" >&2; exit 2; }

START=$(date +%s.%N)
umask 077 # the PSK and the probe's key are written below
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ca-probe.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

fail() { # step, exit code, message
  echo "probe: FAIL $1: $3" >&2
  exit "$2"
}

# The last lines of a command's stderr, on one line, for the failure message.
errs() { tail -n 3 "$WORK/err" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//'; }

# 1. A PSK for the probe host (replaces any earlier probe's).
if ! "$CA_SERVER_BIN" "${SERVER_ARGS[@]}" psk add "$HOST" --ttl 5m --json >"$WORK/psk.json" 2>"$WORK/err"; then
  fail psk 3 "ca-server psk add $HOST failed: $(errs)"
fi
sed -n 's/.*"psk":"\([A-Za-z0-9_-]*\)".*/\1/p' "$WORK/psk.json" | tr -d '\n' >"$WORK/psk"
[ -s "$WORK/psk" ] || fail psk 3 "ca-server psk add printed no PSK"
if [ -z "$FINGERPRINT" ]; then
  FINGERPRINT=$(sed -n 's/.*"fingerprint":"\(sha256:[0-9a-f]*\)".*/\1/p' "$WORK/psk.json")
  [ -n "$FINGERPRINT" ] || fail psk 3 "no root fingerprint (is the data dir initialised?); pass --fingerprint"
fi
rm -f "$WORK/psk.json"

# 2. Bootstrap like a new host would.
"$CA_CLIENT_BIN" bootstrap --server "$SERVER" --fingerprint "$FINGERPRINT" \
  --hostname "$HOST" --psk-file "$WORK/psk" --dir "$WORK/tls" --json >"$WORK/issued.json" 2>"$WORK/err"
rc=$?
case $rc in
  0) ;;
  3) fail issue 4 "TLS or fingerprint check against $SERVER failed (ca-client exit 3): $(errs)" ;;
  4) fail issue 4 "the CA refused the probe's PSK (403; ca-server and the server use different stores?): $(errs)" ;;
  5) fail issue 4 "the CA at $SERVER is unreachable (ca-client exit 5): $(errs)" ;;
  6) fail issue 4 "the CA refused the request (ca-client exit 6): $(errs)" ;;
  *) fail issue 4 "ca-client bootstrap exited $rc: $(errs)" ;;
esac
SERIAL=$(sed -n 's/.*"serial":"\([0-9a-fA-F:]*\)".*/\1/p' "$WORK/issued.json")
[ -n "$SERIAL" ] || fail issue 4 "ca-client printed no serial"
TLS="$WORK/tls"

# 3. The chain leads to the pinned root, for this name.
if ! openssl verify -CAfile "$TLS/ca.pem" -untrusted "$TLS/chain.pem" \
  -verify_hostname "$HOST" -purpose sslserver "$TLS/cert.pem" >"$WORK/err" 2>&1; then
  fail verify 5 "openssl verify refused the certificate $SERIAL: $(errs)"
fi

# The served CRL, verified by openssl against this certificate's chain.
# Prints openssl's verdict; returns openssl's status.
crl_verdict() {
  curl -sS --fail --max-time 10 --cacert "$TLS/ca.pem" -o "$WORK/crl.pem" \
    "${SERVER%/}/v1/crl?format=pem" 2>"$WORK/err" || { echo "fetch failed: $(errs)"; return 90; }
  openssl verify -crl_check -CRLfile "$WORK/crl.pem" -CAfile "$TLS/ca.pem" \
    -untrusted "$TLS/chain.pem" "$TLS/cert.pem" 2>&1 | tr '\n' ' '
  return "${PIPESTATUS[0]}"
}

# 4. The CRL verifies, is current, and does not list the new certificate.
verdict=$(crl_verdict) || fail crl 6 "the CRL at ${SERVER%/}/v1/crl does not check out: $verdict"

if [ "$REVOKE" = 1 ]; then
  # 5. Revoke the probe certificate.
  if ! "$CA_SERVER_BIN" "${SERVER_ARGS[@]}" revoke "$SERIAL" --reason superseded >/dev/null 2>"$WORK/err"; then
    fail revoke 7 "ca-server revoke $SERIAL failed: $(errs)"
  fi
  # 6. revoke publishes the new CRL; the server serves it within one 2 s poll.
  deadline=$(($(date +%s) + CRL_WAIT))
  while :; do
    verdict=$(crl_verdict)
    case "$verdict" in *"certificate revoked"*) break ;; esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
      fail listed 8 "the CRL does not list the revoked serial $SERIAL after ${CRL_WAIT}s (last verdict: $verdict)"
    fi
    sleep 1
  done
fi

ELAPSED=$(echo "$(date +%s.%N) $START" | awk '{printf "%.1f", $1 - $2}')
steps="psk+issue+verify+crl"
[ "$REVOKE" = 1 ] && steps="$steps+revoke+listed"
echo "probe: OK host=$HOST serial=$SERIAL server=$SERVER steps=$steps in ${ELAPSED}s"
