#!/usr/bin/env bash
# The project's test command: sets up the test bed (idempotent), then runs lint, unit
# tests, integration tests against the local Docker engine and every Molecule scenario.
# Ends with pytest's summary line. Extra arguments go to pytest (e.g. -k ledger).
set -o errexit -o nounset -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH"
exec pytest -p no:cacheprovider -ra tests "$@"
