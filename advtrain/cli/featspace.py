"""One command per feature-space component (FEATURE_ATTACKS.md section 0, "artifacts"):

    python -m advtrain.featspace stats --ckpt runs/demo/last.ckpt [--layers net.features.0 ...] [--out F]
    python -m advtrain.featspace encoder --out runs/featspace/mnist_encoder.safetensors
    python -m advtrain.featspace decoder --config configs/featspace_mnist_decoder.yaml

``stats`` fits D2B's activation statistics on the checkpoint's training split (default output
``<ckpt folder>/d2b_stats.safetensors``); ``encoder`` trains the MNIST style encoder; ``decoder``
trains its AdaIN decoder (training the encoder first when its file is missing), resumably.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from . import run_with_clean_errors
from ..evaluation.checkpoint import load_checkpoint
from ..evaluation.guards import check_output_dir
from ..ops.checks import check_count, check_positive
from ..featspace.decoder import fit_style_decoder
from ..featspace.fitting import train_encoder, train_split
from ..featspace.stats import fit_activation_stats

DECODER_KEYS = {"encoder", "out", "dataset", "encoder_epochs", "steps", "batch_size", "lr", "hidden",
                "style_weight", "seed", "checkpoint_every"}


def check_output_file(path: str | Path) -> Path:
    """``path`` can be written as a file: not a folder, its folder writable (checked before any fitting)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder: give the file to write (e.g. {path / 'file.safetensors'})")
    check_output_dir(path.parent)
    return path


def stats_command(args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent / "d2b_stats.safetensors"
    check_output_file(out)
    model, _, dm_hp = load_checkpoint(args.ckpt)
    dm = train_split(args.data or dm_hp.get("dataset") or "mnist_embedded")
    start = time.perf_counter()
    stats = fit_activation_stats(model, dm.train_dataloader(), args.layers)
    stats.save(out)
    print(f"activation statistics of {', '.join(stats.layers)} over {stats.count} images: {out} "
          f"(fitted in {time.perf_counter() - start:.1f} s)")
    return out


def load_decoder_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decoder config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a decoder config is a YAML mapping of {', '.join(sorted(DECODER_KEYS))}")
    bad = sorted(set(cfg) - DECODER_KEYS)
    if bad:
        raise ValueError(f"{path}: unknown key {', '.join(bad)}; valid keys: {', '.join(sorted(DECODER_KEYS))}")
    for key in ("encoder", "out"):
        if key not in cfg:
            raise ValueError(f"{path}: missing key {key!r}")
    try:  # types and ranges now, not after the encoder trained
        for key in ("encoder_epochs", "steps", "batch_size", "hidden", "checkpoint_every"):
            if key in cfg:
                check_count(key, cfg[key])
        for key in ("lr", "style_weight"):
            if key in cfg:
                check_positive(key, cfg[key], allow_zero=key == "style_weight")
        if not isinstance(cfg.get("seed", 0), int) or isinstance(cfg.get("seed", 0), bool):
            raise TypeError(f"seed must be an integer, got {cfg['seed']!r}")
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: {e}") from None
    return cfg


def decoder_command(args: argparse.Namespace) -> Path:
    cfg = load_decoder_config(args.config)
    check_output_file(cfg["out"])
    dataset = cfg.get("dataset", "mnist_embedded")
    if not Path(cfg["encoder"]).is_file():
        train_encoder(cfg["encoder"], dataset, cfg.get("encoder_epochs", 3), cfg.get("seed", 0))
    dm = train_split(dataset)
    xs, ys = zip(*[dm.train_set[i] for i in range(len(dm.train_set))])
    start = time.perf_counter()
    out = fit_style_decoder(cfg["encoder"], cfg["out"], torch.stack(xs), torch.tensor(ys),
                            **{k: cfg[k] for k in ("steps", "batch_size", "lr", "hidden", "style_weight", "seed",
                                                    "checkpoint_every") if k in cfg})
    print(f"decoder: {out} (this run: {time.perf_counter() - start:.0f} s; resumed runs count only their own steps)")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m advtrain.featspace", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stats", help="D2B activation statistics of a checkpoint's model")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--layers", nargs="+", default=None, help="planes (default: the first two convolutions)")
    s.add_argument("--data", default=None, help="dataset (default: the checkpoint's)")
    s.add_argument("--out", default=None)
    e = sub.add_parser("encoder", help="train the MNIST style encoder")
    e.add_argument("--out", required=True)
    e.add_argument("--epochs", type=int, default=3)
    d = sub.add_parser("decoder", help="train the AdaIN decoder of an encoder (resumable)")
    d.add_argument("--config", required=True)
    args = p.parse_args(argv)
    if args.command == "stats":
        stats_command(args)
    elif args.command == "encoder":
        check_count("--epochs (an untrained encoder is no encoder)", args.epochs)
        check_output_file(args.out)
        train_encoder(args.out, epochs=args.epochs)
    else:
        decoder_command(args)
