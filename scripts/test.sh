#!/usr/bin/env bash
# The project's test command: sets up the test bed (idempotent), then runs lint, unit
# tests, integration tests against the local Docker engine and every Molecule scenario.
# Ends with pytest's summary line. Extra arguments go to pytest (e.g. -k ledger).
set -o errexit -o nounset -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH"
# Two pytest processes side by side; they share nothing but the machine:
# - engine: the integration tests on the local engine, then every Molecule scenario, one
#   after another (they share the engine's 127.0.0.1 ports and compose projects, and
#   the fault tests judge latency and load, which a Molecule load generator running beside
#   them would disturb); its output is shown as it comes;
# - other: lint, unit tests and the AWS tests against the local moto server.
# (pytest-xdist's loadgroup did not keep related tests on one worker here.)
OTHER=(tests/lint tests/unit tests/integration/test_s3_transfer.py
       tests/integration/test_rds_snapshot.py tests/integration/test_aws_runbooks.py
       tests/integration/test_backup_rds.py tests/integration/test_incident_timeline.py
       tests/integration/test_aws_faults.py tests/integration/test_dr_failback.py)
IGNORE=()
for path in "${OTHER[@]}"; do IGNORE+=("--ignore=$path"); done
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
PYTEST=(pytest -p no:cacheprovider -ra --durations=15)
"${PYTEST[@]}" "${OTHER[@]}" "$@" >"$LOGS/other" 2>&1 &
other=$!
engine_status=0
"${PYTEST[@]}" tests "${IGNORE[@]}" "$@" 2>&1 | tee "$LOGS/engine" || engine_status=$?
other_status=0
wait "$other" || other_status=$?
echo "---- tests without the Docker engine (ran alongside the tests above) ----"
cat "$LOGS/other"
# One closing line for both runs (exit 5 = nothing selected, e.g. -k matching one side).
python3 - "$LOGS/engine" "$LOGS/other" <<'PY'
import re, sys

totals = {}
for path in sys.argv[1:]:
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
