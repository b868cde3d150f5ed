"""`python -m flaxft.train --config configs/glue/mrpc.yaml key=value ...`"""

from __future__ import annotations

import argparse
import sys

from flaxft.cli import keep_traceback_in, run_main
from flaxft.config import help_text, load_config
from flaxft.host_memory import preload_host_malloc

USAGE = "python -m flaxft.train --config FILE [key=value ...] [--debug]"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flaxft.train", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune an encoder classifier/regressor (BERT-family checkpoints).", epilog="config keys (override with key=value):\n" + help_text())
    parser.add_argument("--config", help="YAML config file (e.g. configs/glue/mrpc.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=5e-5")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    keep_traceback_in(cfg.output_dir)

    from flaxft import run_lock, runtime  # heavy imports after the config is known to be valid

    runtime.setup(cfg)
    with run_lock.hold(cfg.output_dir):  # before the Trainer reads output_dir's checkpoints: a second run stops here
        from flaxft.trainer import Trainer

        Trainer(cfg).train()
    return 0


def cli() -> None:
    """Entry point of `python -m flaxft.train` and the `flaxft-train` script."""
    preload_host_malloc()  # before JAX allocates: see flaxft/host_memory.py
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
