#!/usr/bin/env bash
# `make install`: puts the release binaries, the systemd unit and a default
# config in place. Idempotent; an existing /etc/knode/config.yaml is kept.
# Works on a host without systemd: the unit is then installed for later but
# nothing is enabled (run `knode agent` under any supervisor instead).
#   PREFIX (default /usr/local): knode, knode-pause in $PREFIX/bin
#   CNI_BIN_DIR (default /opt/cni/bin): knode-bridge, knode-host-local, knode-loopback
#   DESTDIR: staged install root (packaging); empty by default
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
CNI_BIN_DIR="${CNI_BIN_DIR:-/opt/cni/bin}"
DESTDIR="${DESTDIR:-}"
TARGET="${TARGET_DIR:-target}/release"

for b in knode knode-pause knode-bridge knode-host-local knode-loopback; do
  [ -x "$TARGET/$b" ] || { echo "install: $TARGET/$b not built (run make build)" >&2; exit 1; }
done

install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$CNI_BIN_DIR" "$DESTDIR/etc/knode" \
  "$DESTDIR/etc/knode/manifests" "$DESTDIR/etc/systemd/system"
install -m 0755 "$TARGET/knode" "$TARGET/knode-pause" "$DESTDIR$PREFIX/bin/"
install -m 0755 "$TARGET/knode-bridge" "$TARGET/knode-host-local" "$TARGET/knode-loopback" \
  "$DESTDIR$CNI_BIN_DIR/"
echo "install: knode, knode-pause -> $DESTDIR$PREFIX/bin; CNI plugins -> $DESTDIR$CNI_BIN_DIR"

if [ -e "$DESTDIR/etc/knode/config.yaml" ]; then
  echo "install: $DESTDIR/etc/knode/config.yaml exists, kept"
else
  install -m 0644 deploy/config.yaml "$DESTDIR/etc/knode/config.yaml"
  echo "install: default config -> $DESTDIR/etc/knode/config.yaml (every key commented at its default)"
fi

sed "s|/usr/local/bin/knode|$PREFIX/bin/knode|" deploy/knode.service \
  > "$DESTDIR/etc/systemd/system/knode.service.tmp"
mv "$DESTDIR/etc/systemd/system/knode.service.tmp" "$DESTDIR/etc/systemd/system/knode.service"
chmod 0644 "$DESTDIR/etc/systemd/system/knode.service"
if [ -n "$DESTDIR" ]; then
  echo "install: knode.service staged in $DESTDIR/etc/systemd/system"
elif [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "install: knode.service installed (systemctl enable --now knode)"
else
  echo "install: knode.service installed for systemd; this host does not run systemd: start 'knode agent' yourself"
fi
