#!/usr/bin/env bash
# The main job, end to end on CPU (2 cores, under 10 minutes):
#   install -> synthesize raw Something-Something-layout videos -> shard + verify -> train a tiny
#   StructViT on 2 processes (DeepSpeed ZeRO-2, gloo) -> interrupt it (SIGTERM: every rank saves)
#   -> resume with the same command -> export + evaluate without DeepSpeed -> TensorBoard command.
# The clips show a disc moving left or right over a random background: only motion tells the two
# classes apart. Re-running starts from scratch (the demo's data and run folders are rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

RAW=data/raw/demo
SHARDS=data/shards/demo
RUN=runs/demo
INTERRUPT_AT_STEP=${INTERRUPT_AT_STEP:-300}
TRAIN=(python launch/local.py --config configs/demo.yaml --nproc 2)
rm -rf "$RAW" "$SHARDS" "$RUN"

echo "== 1. raw videos in the publisher's layout (VP9 .webm, labels.json, train.json, validation.json)"
python -m shards synth ssv2 --out "$RAW/train" --splits train --num-videos 768 --classes 2 --seed 1 --height 32 --frames 16
python -m shards synth ssv2 --out "$RAW/val" --splits val --num-videos 128 --classes 2 --seed 2 --height 32 --frames 16

echo "== 2. shards + manifests, then verify every shard"
python -m shards ssv2 --root "$RAW/train" --split train --out "$SHARDS/train" --max-samples 128
python -m shards ssv2 --root "$RAW/val" --split val --out "$SHARDS/val" --max-samples 128
python -m shards verify "$SHARDS/train"
python -m shards verify "$SHARDS/val"

echo "== 3. training on 2 processes: ${TRAIN[*]}"
"${TRAIN[@]}" &
LAUNCHER=$!
# Interrupt once the run has logged step $INTERRUPT_AT_STEP (the launcher forwards SIGTERM to both ranks).
until python - "$RUN/metrics.jsonl" "$INTERRUPT_AT_STEP" <<'PY'
import json, sys
from pathlib import Path
path, target = Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
sys.exit(0 if any(row["step"] >= target for row in rows) else 1)
PY
do
  kill -0 "$LAUNCHER" 2>/dev/null || { echo "training ended before step $INTERRUPT_AT_STEP" >&2; exit 1; }
  sleep 1
done
echo "== 4. interrupting the run at step >= $INTERRUPT_AT_STEP with SIGTERM (every rank saves, then exits)"
kill -TERM "$LAUNCHER"
wait "$LAUNCHER"
echo "   checkpoint to resume from: $RUN/checkpoints/$(cat "$RUN/checkpoints/latest")"

echo "== 5. resuming with the same command: ${TRAIN[*]}"
"${TRAIN[@]}"

echo "== 6. export consolidated fp32 weights, evaluate them in plain PyTorch (no DeepSpeed)"
python -m pipeline.export "$RUN"
python -m pipeline.train.evaluate --config "$RUN/config.yaml" --weights "$RUN/export/model.pt"

python - "$RUN/eval.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
print(f"final val top-1 (2 classes, chance 50%): {result['val/top1']:.1f}% at step {result['step']}")
PY
echo "In a new shell, enter this environment first (from $PWD): source .venv/bin/activate"
echo "TensorBoard: tensorboard --logdir $RUN/tensorboard"
