#!/usr/bin/env bash
# Creates target/python: a virtualenv with the official Python `kubernetes`
# client, which the API tests drive (tests/tests/python_client.rs). Pinned,
# idempotent: nothing is downloaded when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=37.0.3
venv=target/python
if "$venv/bin/python" -c "import kubernetes, sys; sys.exit(kubernetes.__version__ != '$VERSION')" 2>/dev/null; then
  echo "python client: kubernetes $VERSION present"
  exit 0
fi
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes==$VERSION"
echo "python client: installed kubernetes $VERSION in $venv"
