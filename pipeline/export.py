"""Export a run's checkpoint as one fp32 state dict that plain PyTorch loads.

    python -m pipeline.export runs/demo [--tag step_00000120] [--out runs/demo/export/model.pt]

writes `model.pt` (a state dict: `create_model(**args).load_state_dict(torch.load(...))`) and `model.json`
next to it (the `create_model` arguments, the checkpoint tag and step). No process group is needed.
`pipeline.models.exported.load_exported` reads the pair back (`python -m pipeline.train.evaluate
--weights` uses it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError
from pipeline.errors import RunError, report
from pipeline.io import atomic_open, atomic_write_json
from pipeline.models.exported import exported_arguments_path
from pipeline.train.checkpoint import checkpoint_folder, find_resume_checkpoint, read_trainer_state
from pipeline.train.engine import consolidated_state_dict


def export_checkpoint(run_dir: str | Path, tag: str | None = None, out: str | Path | None = None) -> Path:
    """Consolidate checkpoint `tag` (default: the one resume would pick) of `run_dir`; returns model.pt."""
    run_dir = Path(run_dir)
    folder = checkpoint_folder(run_dir)
    tag_dir = find_resume_checkpoint(folder, str(folder / tag) if tag else "auto")
    if tag_dir is None:
        raise ConfigError(f"{folder}: no complete checkpoint to export")
    state = read_trainer_state(tag_dir)
    weights = consolidated_state_dict(tag_dir.parent, tag_dir.name)
    nonfinite = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if nonfinite:  # the trainer never saves such weights; a damaged or foreign checkpoint may hold them
        raise ConfigError(f"{tag_dir}: weights are not finite ({', '.join(nonfinite[:3])}): not exporting")
    out = Path(out) if out else run_dir / "export" / "model.pt"
    with atomic_open(out) as f:
        torch.save(weights, f)
    info: dict[str, Any] = {
        "model": state.model_arguments,
        "tag": tag_dir.name,
        "step": state.step,
        "run": str(run_dir),
    }
    atomic_write_json(exported_arguments_path(out), info)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a missing run or checkpoint is one error line and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run folder (holding checkpoints/)")
    parser.add_argument("--tag", help="checkpoint folder name (default: latest complete)")
    parser.add_argument("--out", help="output state dict path (default: RUN/export/model.pt)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.run_dir, args.tag, args.out)
    except RunError as err:
        return report(err)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
