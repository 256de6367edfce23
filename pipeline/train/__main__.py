"""One rank of a training job: `python -m pipeline.train --config CONFIG [key=value ...]`.

The process group comes from torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), as set by launch/local.py, torchrun or the Slurm launcher.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import ConfigError
from pipeline.train.config import load_train_config


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when training finished or saved on a stop signal, 2 on a configuration error."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    args = parser.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pipeline.train.engine import leaving_process_group  # heavy imports once the config is good
    from pipeline.train.trainer import train

    try:
        with leaving_process_group():
            train(cfg)
    except ConfigError as err:
        # An error every rank raised together is printed once, by rank 0.
        if not getattr(err, "agreed_by_all_ranks", False) or os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
