#!/usr/bin/env bash
# The tail of `make up` (after bootstrap, build and install): starts
# containerd if it is not running, starts the knode agent on the embedded
# control plane (as knode.service where systemd runs, else in the
# background; the agent writes the default pod network config if none
# exists), imports the examples' busybox image, applies examples/ (three
# web servers and a Service) and says how to reach the Service.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
KNODE="$PREFIX/bin/knode"
CNI_BIN_DIR="${CNI_BIN_DIR:-/opt/cni/bin}"
CNI_CONF_DIR="${CNI_CONF_DIR:-/etc/cni/net.d}"
conf="$CNI_CONF_DIR/10-knode.conflist"
CONTAINERD_SOCK=/run/containerd/containerd.sock
is_systemd() { [ "$(cat /proc/1/comm 2>/dev/null)" = "systemd" ]; }

# containerd: the package's own service where systemd runs (bootstrap keeps
# package installs from starting daemons), else a background process.
if ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
  echo "up: containerd is running"
elif is_systemd; then
  systemctl enable --now containerd.service
  echo "up: started containerd.service"
else
  mkdir -p /var/log
  setsid containerd >>/var/log/containerd.log 2>&1 < /dev/null &
  echo "up: started containerd (pid $!, log /var/log/containerd.log; no systemd here)"
fi
for _ in $(seq 1 100); do
  ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 && break
  sleep 0.1
done

# The agent. Under systemd it is a notify service; elsewhere (containers,
# CI machines without systemd as PID 1) a background process with a log.
if "$KNODE" get namespaces >/dev/null 2>&1; then
  echo "up: a knode agent is already serving /run/knode/knode.sock"
elif is_systemd; then
  systemctl daemon-reload   # knode.service comes from `make install`
  systemctl enable --now knode.service
  echo "up: started knode.service"
else
  mkdir -p /var/log
  setsid "$KNODE" agent >>/var/log/knode.log 2>&1 < /dev/null &
  echo "up: started knode agent (pid $!, log /var/log/knode.log; no systemd here)"
fi
for _ in $(seq 1 100); do
  "$KNODE" get namespaces >/dev/null 2>&1 && break
  sleep 0.1
done
"$KNODE" get namespaces

# The overlay has leased this node's pod subnet by now (or soon).
for _ in $(seq 1 50); do
  [ -f /run/flannel/subnet.env ] && break
  sleep 0.1
done
subnet="$(sed -n 's/^FLANNEL_SUBNET=//p' /run/flannel/subnet.env 2>/dev/null || true)"

# The examples' image, built from the host's busybox-static, so they run on
# a host without registry access.
img="$(mktemp --suffix=.tar)"
scripts/busybox-image.sh "$img" >/dev/null
"$KNODE" image import "$img"
rm -f "$img"

# The examples: three web servers sharing the node's /srv/www, and a
# Service over them (ClusterIP, and NodePort 30080 on every node address).
mkdir -p /srv/www
[ -e /srv/www/index.html ] || echo "hello from knode on $(hostname)" > /srv/www/index.html
"$KNODE" apply -f examples/
for _ in $(seq 1 120); do
  running="$("$KNODE" get pods -o json | jq '[.items[] | select(.status.phase == "Running")] | length')"
  [ "$running" -ge 3 ] && break
  sleep 0.5
done
"$KNODE" get pods -o wide
vip="$("$KNODE" get svc web -o json | jq -r .spec.clusterIP)"
node_ip="$("$KNODE" get nodes -o json |
  jq -r '.items[0].status.addresses[]? | select(.type == "InternalIP") | .address' | head -1)"
for _ in $(seq 1 40); do
  curl -fsS --max-time 2 "http://$vip/" >/dev/null 2>&1 && break
  sleep 0.25
done

cat <<EOF

knode is up: the agent serves the embedded control plane on
/run/knode/knode.sock (root only; state in /var/lib/knode), runs pods
through containerd (namespace "knode"; logs in /var/log/pods), leases this
node's pod subnet (${subnet:-see /run/flannel/subnet.env}) and programs Services in iptables.

The web example answers through its Service:

  curl http://$vip/                    # the ClusterIP, from this node or any pod
  curl http://${node_ip:-NODE-IP}:30080/   # the NodePort, from anywhere that reaches this node

Every pod serves /srv/www from this node: edit /srv/www/index.html and
curl again. Then:

  knode get pods -o wide
  knode get svc web
  knode get endpoints web
  knode logs web-0
  knode exec web-0 -- ls /www
  knode delete -f examples/

The CNI plugins are in $CNI_BIN_DIR and the pod network is $conf;
docs/ explains networking, services, configuration and troubleshooting.
EOF
