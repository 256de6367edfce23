#!/usr/bin/env bash
# The test command: sets itself up, then lints and runs the whole suite (real videos, real shards,
# real DeepSpeed processes over gloo, a real local Slurm cluster). Extra arguments go to pytest.
# `--fast` (first argument): the contributors' subset, the tests not marked `slow` or `slurm`
# (no multi-process training job, no Slurm cluster); CI runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSET=()
if [ "${1:-}" = "--fast" ]; then
  shift
  SUBSET=(-m "not slow and not slurm")
fi
EXTRAS=dev,dali source scripts/env.sh
ruff check .
# Two processes, each taking whole files (their module fixtures, e.g. one Slurm cluster, stay in one): the
# multi-process jobs leave cores idle while they start, wait and save.
python -m pytest -q -n 2 --dist loadfile ${SUBSET[@]+"${SUBSET[@]}"} "$@"
echo "In a new shell, enter this environment first (from $PWD): source .venv/bin/activate"
