#!/usr/bin/env bash
# The tail of `make up`: writes the default pod network conflist (never
# overwriting one that exists) and says how to use the installed plugins.
set -euo pipefail
CNI_BIN_DIR="${CNI_BIN_DIR:-/opt/cni/bin}"
CNI_CONF_DIR="${CNI_CONF_DIR:-/etc/cni/net.d}"
conf="$CNI_CONF_DIR/10-knode.conflist"

mkdir -p "$CNI_CONF_DIR"
if [ -e "$conf" ]; then
  echo "up: keeping existing $conf"
else
  cat > "$conf" <<'JSON'
{
  "cniVersion": "1.1.0",
  "name": "knode",
  "plugins": [
    {
      "type": "knode-bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "knode-host-local",
        "ranges": [[{ "subnet": "10.244.0.0/24" }]]
      }
    }
  ]
}
JSON
  echo "up: wrote $conf"
fi

cat <<EOF

knode CNI plugins are installed in $CNI_BIN_DIR:
  knode-bridge  knode-host-local  knode-loopback
and the pod network config is $conf (bridge cni0, pods in 10.244.0.0/24).

Any CNI runtime uses them as they are: containerd's CRI plugin reads
$CNI_CONF_DIR and $CNI_BIN_DIR by default. To attach a namespace by hand:

  ip netns add demo
  jq '.plugins[0] + {cniVersion, name}' $conf | \\
    CNI_COMMAND=ADD CNI_CONTAINERID=demo CNI_NETNS=/run/netns/demo \\
    CNI_IFNAME=eth0 CNI_PATH=$CNI_BIN_DIR $CNI_BIN_DIR/knode-bridge
  ip netns exec demo ip addr show eth0

and to detach it (the IP is released), the same with CNI_COMMAND=DEL.
EOF
