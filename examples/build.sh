#!/usr/bin/env bash
# Builds the example image, slimmer-example:latest by default (about 1.6 GB).
#
# The base is debian:bookworm: taken from the local daemon if it is there,
# pulled where a registry answers, and otherwise built from Debian's package
# archive with debootstrap (root needed). Wheels are downloaded on the host,
# because pip inside a build may have no working TLS.
#
# usage: examples/build.sh [TAG]
# env:   SLIMMER_NO_PULL=1 skips the pull attempt.
set -euo pipefail

tag=${1:-slimmer-example:latest}
here=$(cd "$(dirname "$0")" && pwd)
base=debian:bookworm

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag is already built"
  exit 0
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [ -z "${SLIMMER_NO_PULL:-}" ] && timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
    echo "pulled $base"
  else
    echo "no registry answered; building $base with debootstrap" >&2
    "$here/debian-base.sh" "$base"
  fi
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$here/ansible-ui/Dockerfile" "$context/"
python3 -m pip download --quiet --dest "$context/wheels" --only-binary=:all: \
  --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  ansible cryptography 2>"$context/pip.log" || { cat "$context/pip.log" >&2; exit 1; }
docker build --quiet --network host --build-arg "BASE=$base" -t "$tag" \
  "$context" >/dev/null
echo "built $tag"
