#!/usr/bin/env bash
# The README's first command: build the example image, slim it with the
# python-rust profile, and show that the slim image still works.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

bash examples/build.sh slimmer-example:latest
python3 -m slimmer apply --profile python-rust \
  --smoke 'ansible localhost -c local -m ping' slimmer-example:latest
docker run --rm --network none slimmer-example:latest-slim \
  python -c 'import cryptography.fernet, yaml, jinja2, ssl; ssl.create_default_context(); print("slim image works")'
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' slimmer-example
