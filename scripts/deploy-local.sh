#!/usr/bin/env bash
# The main job against the embedded default: set up the machine (idempotent), deploy the
# reference stack on the local Docker engine with playbooks/deploy.yml and the
# inventories/local inventory, take a verified backup with playbooks/backup.yml, then
# print the stack's health and the newest backup set.
set -o errexit -o nounset -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH"
ansible-playbook playbooks/deploy.yml "$@"
ansible-playbook playbooks/backup.yml
echo
echo "== health through nginx (http://127.0.0.1:8080/health)"
curl -sS -w '\nHTTP %{http_code}\n' http://127.0.0.1:8080/health
echo "== containers"
docker compose -p fastapi-monolith ps --format 'table {{.Name}}\t{{.Image}}\t{{.Status}}'
echo "== newest backup set"
newest=$(ls -1t /var/backups/fastapi-monolith | grep -v '^pre-restore-' | head -n 1)
python3 - "/var/backups/fastapi-monolith/$newest/SET.json" <<'PY'
import json
import sys

backup = json.load(open(sys.argv[1]))
print(backup["backup_id"], "verified" if backup["verified"] else "NOT VERIFIED")
for dump in backup["dumps"]:
    print("  %-14s %10d bytes  sha256 %s" % (dump["file"], dump["size"], dump["sha256"][:16]))
PY
