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
# Two pytest processes side by side. The tests that do not use the Docker engine (lint,
# unit, and the AWS tests against the local moto server) run in one; every test that uses
# the engine (integration on the local engine, Molecule) runs in the other, one after
# another, since they share the engine and its 127.0.0.1 ports. (pytest-xdist's loadgroup
# did not keep the engine tests on one worker here: module fixtures were set up on both.)
NO_ENGINE=(tests/lint tests/unit tests/integration/test_s3_transfer.py
           tests/integration/test_rds_snapshot.py tests/integration/test_aws_runbooks.py
           tests/integration/test_backup_rds.py)
IGNORE=()
for path in "${NO_ENGINE[@]}"; do IGNORE+=("--ignore=$path"); done
OTHER_LOG=$(mktemp)
ENGINE_LOG=$(mktemp)
trap 'rm -f "$OTHER_LOG" "$ENGINE_LOG"' EXIT
pytest -p no:cacheprovider -ra "${NO_ENGINE[@]}" "$@" >"$OTHER_LOG" 2>&1 &
other=$!
engine_status=0
pytest -p no:cacheprovider -ra tests "${IGNORE[@]}" "$@" 2>&1 | tee "$ENGINE_LOG" || engine_status=$?
other_status=0
wait "$other" || other_status=$?
echo "---- tests without the Docker engine (ran alongside the ones above) ----"
cat "$OTHER_LOG"
# One closing line for both runs (exit 5 = nothing selected, e.g. -k matching one side only).
python3 - "$ENGINE_LOG" "$OTHER_LOG" "$engine_status" "$other_status" <<'PY'
import re, sys

totals = {}
for path in sys.argv[1:3]:
    lines = [l for l in open(path, errors="replace") if re.match(r"^=+ .* in [0-9.]+s", l)]
    for count, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", lines[-1] if lines else ""):
        word = "errors" if word.startswith("error") else word
        totals[word] = totals.get(word, 0) + int(count)
order = ["passed", "failed", "errors", "skipped", "xfailed", "xpassed"]
print("== " + ", ".join(f"{totals.get(w, 0)} {w}" for w in order if w in totals or w in ("passed", "failed")) + " ==")
PY
status=0
for s in "$engine_status" "$other_status"; do
  if [ "$s" != 0 ] && [ "$s" != 5 ]; then status=$s; fi
done
exit "$status"
