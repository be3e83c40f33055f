#!/usr/bin/env python
"""Train a (robust) classifier: LightningCLI driven by configs/*.yaml.

    python train.py                                   # configs/default.yaml (embedded MNIST, C4)
    python train.py --config configs/mnist_pgd.yaml   # a recipe
    python train.py --model.attack bp --trainer.max_epochs 5
    python train.py --ckpt_path runs/demo/last.ckpt   # resume exactly (into a new run folder)

Each run writes its own folder ``<default_root_dir>/version_N`` (last.ckpt, metrics.csv); after a
finished fit ``<default_root_dir>/last.ckpt`` links to it. A run resumes only from ``--ckpt_path``.
``--trainer.default_root_dir`` moves the logs and checkpoints (unless their folders are given too).
After fitting, the best/last model is tested on the datamodule's test split.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from advtrain.cli import run_with_clean_errors  # noqa: E402
from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.evaluation.checkpoint import read_checkpoint  # noqa: E402
from advtrain.training import AdversarialTrainingModule  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.yaml")


class AdvTrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this checkpoint (model, optimizer, epoch, RNG)")
        parser.add_argument("--skip_test", type=bool, default=False, help="do not test after fitting")

    def before_instantiate_classes(self) -> None:
        """``--trainer.default_root_dir`` moves the loggers' folders too, unless one is given itself."""
        argv = " ".join(sys.argv[1:])
        if "--trainer.default_root_dir" not in argv or "save_dir" in argv:
            return
        trainer = self.config.trainer
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for logger in loggers:
            init = getattr(logger, "init_args", None)
            if init is not None and getattr(init, "save_dir", None) is not None:
                init.save_dir = trainer.default_root_dir


def link_newest_run(trainer) -> None:
    """``<default_root_dir>/last.ckpt`` -> the finished run's ``version_N/last.ckpt`` (a symlink, so
    no checkpoint is ever overwritten); a real file there is left alone, with a note."""
    ckpt = trainer.checkpoint_callback
    last = Path(ckpt.dirpath) / "last.ckpt" if ckpt is not None and ckpt.dirpath else None
    root = Path(trainer.default_root_dir)
    if trainer.global_rank != 0 or last is None or not last.is_file() or last.parent.parent.resolve() != root.resolve():
        return
    link = root / "last.ckpt"
    if link.exists() and not link.is_symlink():
        print(f"train.py: {link} is a checkpoint of an earlier layout, left as is; this run's is {last}",
              file=sys.stderr)
        return
    tmp = root / ".last.ckpt.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(last.relative_to(root))
    tmp.replace(link)
    print(f"checkpoint: {last} ({link} links to it)")


def main() -> None:
    cli = AdvTrainCLI(AdversarialTrainingModule, NamedDataModule, run=False, seed_everything_default=0,
                      save_config_kwargs={"overwrite": True},
                      parser_kwargs={"default_config_files": [DEFAULT_CONFIG]})
    ckpt = cli.config.get("ckpt_path")
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {ckpt}")
    if ckpt:
        read_checkpoint(ckpt)  # truncated, text, pickled objects, NaN weights: one line before Lightning
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    link_newest_run(cli.trainer)
    if not cli.config.get("skip_test"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    run_with_clean_errors(main, "train.py")
