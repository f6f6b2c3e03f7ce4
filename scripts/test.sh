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
XENVLAN_XEN_E2E=0 "$py" -m pytest -q -p no:cacheprovider "$@"
# The whole reproduction on real Xen guests: a Xen Dom0 nested under QEMU (8-12 min, plus ~90 s
# to build its image once). Skipped when arguments select tests, or with XENVLAN_XEN_E2E=0.
if [ $# -eq 0 ] && [ "${XENVLAN_XEN_E2E:-1}" = 1 ]; then
  echo "== nested Xen e2e"
  XENVLAN_XEN_E2E=1 "$py" -m pytest -q -s -p no:cacheprovider tests/e2e/test_xen.py
fi
echo "== safeguard mutants"; "$py" scripts/mutants.py
