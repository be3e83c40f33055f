#!/usr/bin/env python
"""Train (and validate/test) a (robust) classifier: LightningCLI subcommands driven by configs/*.yaml.

    python train.py                                        # = fit with configs/default.yaml (embedded MNIST, C4)
    python train.py fit --config configs/mnist_pgd.yaml    # a recipe (layered over configs/default.yaml)
    python train.py fit --model.attack bp --trainer.max_epochs 5
    python train.py fit --optimizer SGD --optimizer.lr 0.01 --optimizer.momentum 0.9
    python train.py fit --ckpt_path runs/demo/last.ckpt    # resume exactly (into a new run folder)
    python train.py test --ckpt_path runs/demo/last.ckpt   # test (or validate) a checkpoint
    python train.py fit --print_config                     # every option

Without a subcommand, ``fit`` is meant (``python train.py --config X`` fits X). Each run writes its own
folder ``<default_root_dir>/version_N`` (last.ckpt, metrics.csv); after a finished fit
``<default_root_dir>/last.ckpt`` links to it. A run resumes only from ``--ckpt_path``; checkpoints are
loaded with ``weights_only=True``. ``--trainer.default_root_dir`` moves the logs and checkpoints
(unless their folders are given too). After fitting, the model is tested on the datamodule's test
split (``--skip_test true``: not).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from advtrain.cli import run_with_clean_errors  # noqa: E402
from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.evaluation.checkpoint import read_checkpoint  # noqa: E402
from advtrain.training import AdversarialTrainingModule  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.yaml")
SUBCOMMANDS = ("fit", "validate", "test")


class AdvTrainCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; ``weights_only`` is no option: checkpoints always load with True."""
        skip = {"model", "dataloaders", "datamodule", "weights_only"}
        return {"fit": skip | {"train_dataloaders", "val_dataloaders"}, "validate": skip, "test": skip}

    def _parse_ckpt_path(self) -> None:
        """No: LightningCLI would replace the model options of the command line and configs by the
        checkpoint's hyper_parameters without a word. The model is what the config says; a checkpoint of
        another model is refused (``AdversarialTrainingModule.on_load_checkpoint``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--skip_test", type=bool, default=False, help="fit: do not test after fitting")

    def before_instantiate_classes(self) -> None:
        """``--trainer.default_root_dir`` moves the loggers' folders too, unless one is given itself."""
        argv = " ".join(sys.argv[1:])
        if "--trainer.default_root_dir" not in argv or "save_dir" in argv:
            return
        trainer = self.config[self.subcommand].trainer
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for logger in loggers:
            init = getattr(logger, "init_args", None)
            if init is not None and getattr(init, "save_dir", None) is not None:
                init.save_dir = trainer.default_root_dir

    def _run(self, stage: str, ckpt_path: str | None = None, **kwargs) -> None:
        if ckpt_path and not Path(ckpt_path).is_file():
            what = "checkpoint to resume from" if stage == "fit" else "checkpoint to evaluate"
            raise FileNotFoundError(f"{what} not found: {ckpt_path}")
        if ckpt_path:
            read_checkpoint(ckpt_path)  # truncated, text, pickled objects, NaN weights: one line before Lightning
        getattr(self.trainer, stage)(ckpt_path=ckpt_path, weights_only=True, **kwargs)

    def fit(self, **kwargs) -> None:
        self._run("fit", **kwargs)
        link_newest_run(self.trainer)
        if not self.config["fit"].get("skip_test"):
            self.trainer.test(self.model, datamodule=self.datamodule)

    def validate(self, **kwargs) -> None:
        self._run("validate", **kwargs)

    def test(self, **kwargs) -> None:
        self._run("test", **kwargs)


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


def with_subcommand(argv: list[str]) -> list[str]:
    """``fit`` unless a subcommand (or the top-level help) is given: ``python train.py [--opts]`` fits."""
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help")):
        return argv
    return ["fit", *argv]


def main() -> None:
    sys.argv[1:] = with_subcommand(sys.argv[1:])
    # parse errors raise (exit_on_error False): run_with_clean_errors prints their one relevant line
    defaults = {"default_config_files": [DEFAULT_CONFIG], "exit_on_error": False}
    with warnings.catch_warnings():  # the module's own Adam is only the default for use outside the CLI
        warnings.filterwarnings("ignore", message=".*configure_optimizers` will be overridden")
        AdvTrainCLI(AdversarialTrainingModule, NamedDataModule, seed_everything_default=0,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False, **{s: defaults for s in SUBCOMMANDS}})


if __name__ == "__main__":
    run_with_clean_errors(main, "train.py")
