#!/usr/bin/env bash
# Writes an OCI image layout tar of the host's static busybox (Debian's
# busybox-static) with its applets linked in /bin, named knode.local/busybox:1.
# `make up` imports it so the examples run on a host without registry access.
# Usage: scripts/busybox-image.sh OUT.tar
set -euo pipefail
out="${1:?usage: busybox-image.sh OUT.tar}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
NAME="${IMAGE_NAME:-knode.local/busybox:1}"
[ -x "$BUSYBOX" ] || { echo "busybox-image: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/etc" "$work/layout/blobs/sha256"
cp "$BUSYBOX" "$work/rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"
done
chmod 1777 "$work/rootfs/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"

# Reproducible: root-owned, time zero, sorted.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$work/rootfs" -cf "$work/layer.tar" .
blob() { # file -> prints "digest size", stores it in the layout
  local d s
  d="$(sha256sum "$1" | cut -d' ' -f1)"
  s="$(stat -c %s "$1")"
  cp "$1" "$work/layout/blobs/sha256/$d"
  echo "$d $s"
}
read -r ldig lsize < <(blob "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$ldig" > "$work/config.json"
read -r cdig csize < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cdig" "$csize" "$ldig" "$lsize" > "$work/manifest.json"
read -r mdig msize < <(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$mdig" "$msize" "$NAME" > "$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
tar --owner=0 --group=0 -C "$work/layout" -cf "$out" oci-layout index.json blobs
echo "busybox-image: wrote $out ($NAME)"
