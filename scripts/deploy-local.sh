#!/usr/bin/env bash
# The main job against the embedded default: set up the machine (idempotent), deploy the
# reference stack on the local Docker engine with playbooks/deploy.yml and the
# inventories/local inventory, then print its health.
set -o errexit -o nounset -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH"
ansible-playbook playbooks/deploy.yml "$@"
echo
echo "== health through nginx (http://127.0.0.1:8080/health)"
curl -sS -w '\nHTTP %{http_code}\n' http://127.0.0.1:8080/health
echo "== containers"
docker compose -p fastapi-monolith ps --format 'table {{.Name}}\t{{.Image}}\t{{.Status}}'
