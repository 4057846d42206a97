#!/usr/bin/env bash
# Install the Debian packages Cohort's data plane and tests need, only those that are missing.
set -euo pipefail

declare -A packages=(
  [haproxy]=haproxy
  [nft]=nftables
  [keepalived]=keepalived
  [ip]=iproute2
  [ping]=iputils-ping
  [arping]=iputils-arping
  [curl]=curl
  [wrk]=wrk
  [ethtool]=ethtool
  [ps]=procps
  [initdb]=postgresql
  [bird]=bird2
  [vtysh]=frr
  [clang]=clang
)

missing=()
for binary in "${!packages[@]}"; do
  if [ "$binary" = initdb ]; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=("${packages[$binary]}")
  elif ! command -v "$binary" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$binary" ]; then
    missing+=("${packages[$binary]}")
  fi
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages enable services we do not want running on the host: Cohort runs its own.
for service in haproxy keepalived postgresql bird frr; do
  systemctl disable --now "$service" >/dev/null 2>&1 || true
done
