#!/usr/bin/env bash
# The project's test command: sets up the test bed (idempotent), then runs lint, unit
# tests, integration tests against the local Docker engine and every Molecule scenario.
# Ends with pytest's summary line. Extra arguments go to pytest (e.g. -k ledger; -n 0 runs
# everything in one process).
set -o errexit -o nounset -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH"
# Two pytest-xdist workers: the tests that use the Docker engine (integration, Molecule) form
# one group and run one after another on one worker (they share the engine and its ports);
# lint and unit tests run on the other meanwhile (tests/conftest.py assigns the group).
exec pytest -p no:cacheprovider -ra -n 2 --dist loadgroup tests "$@"
