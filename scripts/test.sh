#!/usr/bin/env bash
# The test command: install everything (apt + the venv), then lint, type-check and run every test,
# including the end-to-end suite that boots real guests in a test-made network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
py=${XENVLAN_VENV:-/opt/xenvlan/venv}/bin/python
# The tests also render the HTML report in a real headless browser.
if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
export XENVLAN_REQUIRE_E2E=1   # on this path a skipped e2e suite is a failure
echo "== ruff"; "$py" -m ruff check xenvlan tests bench scripts
echo "== mypy"; "$py" -m mypy
echo "== pytest"
"$py" -m pytest -q -p no:cacheprovider "$@"
echo "== safeguard mutants"; "$py" scripts/mutants.py
