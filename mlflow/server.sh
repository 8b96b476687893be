#!/usr/bin/env bash
# Start a shared MLflow tracking server (registry + proxied artifacts) from mlflow/server.env.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
env_file="$here/server.env"
[ -f "$env_file" ] || env_file="$here/server.env.example"
set -a; source "$env_file"; set +a
cd "$root"
mkdir -p data/mlflow
exec "${MLFLOW_BIN:-$root/.venv/bin/mlflow}" server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}"
