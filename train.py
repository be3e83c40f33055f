#!/usr/bin/env python
"""Train a (robust) classifier: LightningCLI driven by configs/*.yaml.

    python train.py                                   # configs/default.yaml (embedded MNIST, C4)
    python train.py --config configs/mnist_pgd.yaml   # a recipe
    python train.py --model.attack bp --trainer.max_epochs 5
    python train.py --ckpt_path runs/demo/last.ckpt   # resume exactly

After fitting, the best/last model is tested on the datamodule's test split.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from advtrain.cli import run_with_clean_errors  # noqa: E402
from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.training import AdversarialTrainingModule  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.yaml")


class AdvTrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this checkpoint (model, optimizer, epoch, RNG)")
        parser.add_argument("--skip_test", type=bool, default=False, help="do not test after fitting")


def main() -> None:
    cli = AdvTrainCLI(AdversarialTrainingModule, NamedDataModule, run=False, seed_everything_default=0,
                      save_config_kwargs={"overwrite": True},
                      parser_kwargs={"default_config_files": [DEFAULT_CONFIG]})
    ckpt = cli.config.get("ckpt_path")
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {ckpt}")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    if not cli.config.get("skip_test"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    run_with_clean_errors(main, "train.py")
