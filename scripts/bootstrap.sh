#!/usr/bin/env bash
# Installs every Debian/Ubuntu package that building and testing knode needs;
# with `--bench`, also the reference tools only `make bench` uses. Idempotent: packages already present are not touched, and nothing is
# downloaded when the list is complete. Services shipped by these packages
# (containerd, etcd, docker-registry) are NOT started by the install: tests
# start their own private instances on loopback.
set -euo pipefail

PACKAGES=(
  # build
  build-essential pkg-config protobuf-compiler libprotobuf-dev
  # pods
  containerd runc busybox-static skopeo docker-registry
  # networking and the reference CNI plugins we compare against
  iproute2 iptables conntrack containernetworking-plugins
  iputils-ping socat iperf3 util-linux procps kmod nftables
  # cluster DNS tests: an upstream server and dig
  dnsmasq dnsutils
  # control plane
  etcd-server etcd-client
  # misc tools used by scripts
  curl ca-certificates jq
  # the API tests' Python client lives in a virtualenv (scripts/python-client.sh)
  python3-venv
)

# `make bench` only: the DNS load generator and the reference DNS server
# knode's is compared with (dnsmasq, above, is the other one).
if [ "${1:-}" = "--bench" ]; then
  PACKAGES+=(dnsperf unbound)
fi

# The API tests drive the real kubectl: keep the host's own (any recent
# one); only where none exists, take Debian's kubernetes-client.
if ! command -v kubectl >/dev/null 2>&1; then
  PACKAGES+=(kubernetes-client)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "bootstrap: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi

echo "bootstrap: installing ${missing[*]}"
# Keep package maintainer scripts from starting daemons that listen on
# non-loopback addresses (docker-registry, etcd): policy-rc.d exit 101 means
# "action forbidden". Only ours is removed afterwards.
policy=/usr/sbin/policy-rc.d
ours=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  ours=1
fi
cleanup() { if [ "$ours" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "bootstrap: done"
