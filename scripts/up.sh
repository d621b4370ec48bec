#!/usr/bin/env bash
# The tail of `make up`: starts containerd if it is not running, starts the
# knode agent on the embedded control plane (as knode.service where systemd
# runs, else in the background; the agent writes the default pod network
# config if none exists), imports the examples' busybox image, and says how
# to use it.
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
  install -m 0644 deploy/knode.service /etc/systemd/system/knode.service
  systemctl daemon-reload
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

cat <<EOF

The knode agent serves the embedded control plane on /run/knode/knode.sock
(root only; state in /var/lib/knode) and runs pods through containerd
(namespace "knode"; logs in /var/log/pods). Try:

  knode apply -f examples/web.yaml
  knode get pods -o wide
  echo hello > /srv/www/index.html
  wget -qO- http://\$(knode get pod web -o json | jq -r .status.podIP)/
  knode logs web
  knode exec web -- ls /www
  knode get services
  knode get endpoints

knode CNI plugins are installed in $CNI_BIN_DIR:
  knode-bridge  knode-host-local  knode-loopback
and the pod network config is $conf (bridge cni0, pods in ${subnet:-the
node's leased subnet}; \`knode get subnetleases\` and /run/flannel/subnet.env
show the overlay's lease, docs/networking.md explains it).

Any CNI runtime uses them as they are: containerd's CRI plugin reads
$CNI_CONF_DIR and $CNI_BIN_DIR by default. To attach a namespace by hand:

  ip netns add demo
  jq '.plugins[0] + {cniVersion, name}' $conf | \\
    CNI_COMMAND=ADD CNI_CONTAINERID=demo CNI_NETNS=/run/netns/demo \\
    CNI_IFNAME=eth0 CNI_PATH=$CNI_BIN_DIR $CNI_BIN_DIR/knode-bridge
  ip netns exec demo ip addr show eth0

and to detach it (the IP is released), the same with CNI_COMMAND=DEL.
EOF
