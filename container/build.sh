#!/usr/bin/env bash
# Builds slimmer's own image from the Containerfile at the top of the repo.
#
# The base is debian:bookworm: taken from the local daemon if it is there,
# pulled where a registry answers, and otherwise built with debootstrap by
# examples/debian-base.sh. Wheels (slimmer's and its dependencies') are
# made on the host and copied in.
#
# usage: container/build.sh [TAG]      (default slimmer:latest)
# env:   SLIMMER_NO_PULL=1 skips the pull attempt.
set -euo pipefail

tag=${1:-slimmer:latest}
root=$(cd "$(dirname "$0")/.." && pwd)
base=debian:bookworm

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [ -z "${SLIMMER_NO_PULL:-}" ] && timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
    echo "pulled $base"
  else
    echo "no registry answered; building $base with debootstrap" >&2
    "$root/examples/debian-base.sh" "$base"
  fi
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$root/Containerfile" "$context/"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$context/wheels" "$root" \
  2>"$context/pip.log" || { cat "$context/pip.log" >&2; exit 1; }
# Its dependencies, as pyproject.toml names them: binary wheels only, for
# Debian bookworm's python3 (3.11).
python3 -m pip download --quiet --dest "$context/wheels" --only-binary=:all: \
  --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  "$context"/wheels/slimmer-*.whl \
  2>"$context/pip.log" || { cat "$context/pip.log" >&2; exit 1; }
docker build --quiet --network host --build-arg "BASE=$base" \
  -f "$context/Containerfile" -t "$tag" "$context" >/dev/null
docker run --rm --network none "$tag" --version
echo "built $tag"
