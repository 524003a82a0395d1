#!/usr/bin/env bash
# Makes a minimal Debian bookworm image from Debian's archive with
# debootstrap and imports it into the local daemon, for machines where no
# image registry answers.
#
# usage: examples/debian-base.sh [TAG]   (needs root and debootstrap)
set -euo pipefail

tag=${1:-debian:bookworm}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
# Ship no package lists or downloaded packages, and have apt keep it so.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/cache/apt/*.bin
printf '%s\n' \
  'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
  'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' \
  >"$rootfs/etc/apt/apt.conf.d/docker-clean"
tar -C "$rootfs" --numeric-owner -cf - . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' - "$tag" >/dev/null
echo "built $tag"
