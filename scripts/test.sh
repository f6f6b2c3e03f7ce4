#!/usr/bin/env bash
# The test command: install everything (apt + pip), then lint, type-check and run every test,
# including the end-to-end suite that boots real guests in a test-made network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export XENVLAN_REQUIRE_E2E=1   # on this path a skipped e2e suite is a failure
echo "== ruff"; python3 -m ruff check xenvlan tests bench
echo "== mypy"; python3 -m mypy
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider "$@"
