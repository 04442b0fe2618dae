#!/usr/bin/env bash
# spawn-host.sh: an example host spawner. Creates the one-time PSK of a new
# host on the CA remotely (admin API, mTLS with an admin certificate) and
# prints cloud-init user-data that hands the new VM its bootstrap bundle
# (written 0600 to tmpfs) and runs `ca-client bootstrap --bundle`, which
# deletes the bundle once the certificate is installed. See docs/spawner.md.
#
#   scripts/spawn-host.sh --server URL --admin-cert DIR [--ttl 1h] \
#       [--san NAME]... [--public-url URL] [--client-dir DIR] HOSTNAME > user-data
#
# The user-data holds the PSK: pass it straight to the cloud API, do not keep it.
# Environment: CA_SERVER_BIN (default: ca-server on PATH), CA_CLIENT_PATH
# (ca-client on the VM, default: ca-client).
# Exit codes: 0 ok, 1 the CA refused or failed (its message on stderr), 2 usage.
set -euo pipefail
umask 077

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

server="" admin_cert="" ttl="1h" public_url="" client_dir="/etc/ca-client" host=""
sans=()
while [ $# -gt 0 ]; do
    case "$1" in
        --server) server="${2:?}"; shift 2 ;;
        --admin-cert) admin_cert="${2:?}"; shift 2 ;;
        --ttl) ttl="${2:?}"; shift 2 ;;
        --san) sans+=(--san "${2:?}"); shift 2 ;;
        --public-url) public_url="${2:?}"; shift 2 ;;
        --client-dir) client_dir="${2:?}"; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "spawn-host.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$host" ] || usage; host="$1"; shift ;;
    esac
done
if [ -z "$server" ] || [ -z "$admin_cert" ] || [ -z "$host" ]; then usage; fi

ca_server="${CA_SERVER_BIN:-ca-server}"
ca_client="${CA_CLIENT_PATH:-ca-client}"
# Both go into the YAML unquoted: plain path characters only.
if [[ ! "$client_dir" =~ ^/[A-Za-z0-9._/-]+$ ]] || [[ ! "$ca_client" =~ ^[A-Za-z0-9._/-]+$ ]]; then
    echo "spawn-host.sh: --client-dir and CA_CLIENT_PATH must be plain paths" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bundle="$work/bundle.json"

extra=()
[ -z "$public_url" ] || extra+=(--server-url "$public_url")
# The CA answers with its public URL and root fingerprint; ca-server checks
# the fingerprint against the admin directory's pinned ca.pem.
"$ca_server" psk add "$host" --server "$server" --admin-cert "$admin_cert" \
    --ttl "$ttl" "${sans[@]}" "${extra[@]}" --bundle "$bundle" >&2

# /run is tmpfs: the PSK never reaches the VM's disk; bootstrap deletes it.
path="/run/ca-client-bundle.json"
cat <<EOF
#cloud-config
write_files:
  - path: $path
    owner: root:root
    permissions: '0600'
    encoding: b64
    content: $(base64 -w0 "$bundle")
runcmd:
  - [ $ca_client, bootstrap, --bundle, $path, --dir, $client_dir ]
EOF
