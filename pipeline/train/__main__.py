"""One rank of a training job: `python -m pipeline.train --config CONFIG [key=value ...]`.

The process group comes from torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), as set by launch/local.py, torchrun or the Slurm launcher.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import RunError, report
from pipeline.train.config import load_train_config


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when training finished or saved on a stop signal; on an error, its line and kind's status
    (`pipeline.errors.OUTCOMES`)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    args = parser.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
    except RunError as err:
        return report(err)
    from pipeline.train.engine import leaving_process_group  # heavy imports once the config is good
    from pipeline.train.trainer import train

    try:
        with leaving_process_group():
            train(cfg)
    except RunError as err:
        return report(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
