# Source this file: it makes (once) and activates the project's virtual environment.
# Re-installs only when setup.cfg, a constraints file or the extras changed. Used by demo.sh and
# test.sh (which adds the `dali` extra: the DALI path is tested on CPU with VP9 shards).
# A user's shell enters the environment with `source .venv/bin/activate` (README, Set-up): the
# package is installed editable (no PYTHONPATH needed) and DeepSpeed detects the accelerator itself
# (DS_ACCELERATOR spares its CPU warning); sourcing this file would leave `set -euo pipefail` there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}

# System packages: FFmpeg's shared libraries (torchcodec) and its CLI (benchmarks). Root only.
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[env] apt-get install ffmpeg" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends ffmpeg >&2
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # GPU machine: keep the machine's own CUDA torch (visible through system site-packages).
  VENV_FLAGS=(--system-site-packages); CONSTRAINTS=()
else
  VENV_FLAGS=(); CONSTRAINTS=(-c "$ROOT/constraints-cpu.txt")
fi
EXTRAS=${EXTRAS:-dev}

[ -x "$VENV/bin/python" ] || python3 -m venv "${VENV_FLAGS[@]}" "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
STAMP="$VENV/.installed-$( (cat "$ROOT/setup.cfg" "$ROOT/constraints-cpu.txt" "$ROOT/pyproject.toml"; echo "$EXTRAS") | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "[env] pip install -e .[$EXTRAS] into $VENV (a few minutes the first time)" >&2
  python -m pip install -q "${CONSTRAINTS[@]}" -e "$ROOT[$EXTRAS]" >&2
  rm -f "$VENV"/.installed-*; touch "$STAMP"
fi
export DS_ACCELERATOR=${DS_ACCELERATOR:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
