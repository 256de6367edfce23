"""One rank of the ZeRO matrix job (started by test_zero_stages.py through launch.local.run).

In one process group it trains the demo config under ZeRO 1, 2 and 3, each with and without
activation checkpointing; after each run rank 0 exports the checkpoint and evaluates the exported
weights in plain PyTorch. Usage: zero_matrix_worker.py SUMMARY.json CONFIG [key=value ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from pipeline.export import export_checkpoint
from pipeline.io import atomic_write_json
from pipeline.train.config import load_train_config
from pipeline.train.evaluate import evaluate_exported
from pipeline.train.trainer import train


def main() -> None:
    """Train the six variants one after the other; rank 0 writes the summary."""
    summary_path, config, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    summary = []
    for stage in (1, 2, 3):
        for checkpointing in (False, True):
            name = f"zero{stage}_{'ckpt' if checkpointing else 'plain'}"
            settings = [*overrides, f"name={name}", f"engine.zero_stage={stage}"]
            settings.append(f"engine.activation_checkpointing={str(checkpointing).lower()}")
            cfg = load_train_config(config, settings)
            result = train(cfg)
            if dist.get_rank() == 0:
                rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
                losses = [row["train/loss"] for row in rows if "train/loss" in row]
                weights = export_checkpoint(cfg.run_dir)
                offline = evaluate_exported(str(cfg.run_dir / "config.yaml"), str(weights), [])
                summary.append(
                    {
                        "name": name,
                        "losses": losses,
                        "live_top1": result.eval["val/top1"],
                        "exported_top1": offline.top1,
                        "step": result.step,
                    }
                )
            dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_json(summary_path, summary)


if __name__ == "__main__":
    main()
