#!/usr/bin/env bash
# The test command: sets itself up, then lints and runs the whole suite (real videos, real shards,
# real DeepSpeed processes over gloo, a real local Slurm cluster). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev,dali source scripts/env.sh
ruff check .
python -m pytest -q "$@"
echo "In a new shell, enter this environment first (from $PWD): source .venv/bin/activate"
