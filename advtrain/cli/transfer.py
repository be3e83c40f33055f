"""``python evaluate.py --transfer ...``: the source x target transfer matrix (``transfer.py``).

    python evaluate.py --transfer --zoo runs/zoo --out runs/zoo/transfer            # every zoo model both ways
    python evaluate.py --transfer --sources runs/zoo/c4_s0/last.ckpt --targets runs/zoo/mlp/last.ckpt \\
        --suite transfer_mnist --seeds 0 1 2 --n 500
    python evaluate.py --transfer --sources efficientnet_lite1_imagenet --targets efficientnet_lite2_imagenet \\
        --data foolbox_imagenet --suite transfer_imagenet
    python evaluate.py --transfer --zoo runs/zoo --procs 2                          # shard batches (gloo)

A model is a train.py checkpoint (or a zoo's ``<name>/last.ckpt``) or a pretrained name
(``efficientnet_lite1_imagenet``, ``efficientnet_lite2_imagenet``). Writes transfer.json (rewritten
after every cell; a rerun skips finished cells), transfer.md and transfer.png to --out.
"""
from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..data import NamedDataModule
from ..models.imagenet_lite import LITE, efficientnet_lite_imagenet, foolbox_imagenet_samples
from ..io.files import folder_lock
from ..evaluation.checkpoint import load_checkpoint
from ..evaluation.guards import check_output_dir
from ..distributed import dist_info, launch
from ..evaluation.suite import load_suite
from ..evaluation.transfer import transfer_matrix
from ..evaluation.transfer_report import plot_transfer, write_transfer_report

CHECKPOINT_NAMES = ("last.ckpt", "model.ckpt")


def zoo_members(zoo: str | Path) -> list[str]:
    """The checkpoints of a zoo folder: ``<zoo>/<name>/last.ckpt`` (or ``*.ckpt`` directly inside)."""
    zoo = Path(zoo)
    if not zoo.is_dir():
        raise FileNotFoundError(f"zoo folder not found: {zoo}")
    found = sorted(str(p) for n in CHECKPOINT_NAMES for p in zoo.glob(f"*/{n}")) or sorted(map(str, zoo.glob("*.ckpt")))
    if not found:
        raise ValueError(f"the zoo {zoo} is empty: no <name>/last.ckpt or *.ckpt inside (train it with "
                         "python -m advtrain.zoo --out DIR)")
    return found


def member_label(spec: str) -> str:
    p = Path(spec)
    return p.parent.name if p.name in CHECKPOINT_NAMES else p.stem if p.suffix == ".ckpt" else spec


def load_member(spec: str) -> tuple[nn.Module, dict]:
    """(model, datamodule hyper-parameters) for a checkpoint path or a pretrained name."""
    if spec in LITE:
        return efficientnet_lite_imagenet(spec), {"dataset": "foolbox_imagenet"}
    if not Path(spec).exists():
        raise FileNotFoundError(f"model {spec!r} is neither a checkpoint file nor a pretrained name "
                                f"({', '.join(LITE)})")
    model, _, dm_hp = load_checkpoint(spec)
    return model, dm_hp


def load_images(dataset: str, n: int | None, root: str | None, dm_hp: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset == "foolbox_imagenet":
        x, y = foolbox_imagenet_samples()
    else:
        same = dataset == dm_hp.get("dataset")
        dm = NamedDataModule(dataset=dataset, root=root or (dm_hp.get("root") if same else None),
                             image_size=dm_hp.get("image_size") if same else None)
        dm.setup("test")
        test_set = dm.inner.test_set
        k = len(test_set) if n is None else n
        if k > len(test_set):
            raise ValueError(f"--n {k} is larger than the test set of {dataset} ({len(test_set)} images)")
        xs, ys = zip(*[test_set[i] for i in range(k)])
        x, y = torch.stack(xs), torch.tensor(ys)
    return (x[:n], y[:n]) if n is not None else (x, y)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py --transfer", description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default=None, help="folder of checkpoints (<name>/last.ckpt): sources and targets")
    p.add_argument("--sources", nargs="+", default=None, help="source models (default: the zoo)")
    p.add_argument("--targets", nargs="+", default=None, help="target models (default: the zoo)")
    p.add_argument("--suite", default="transfer_mnist",
                   help="attack suite (a name in advtrain/evaluation/suites or a YAML file)")
    p.add_argument("--data", default=None, help="dataset (default: the first checkpoint's; foolbox_imagenet)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", "--images", dest="n", type=int, default=None, help="test images N' (default 500 or all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--no-quantize", action="store_true", help="score real-valued crafted images (default 8-bit)")
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--procs", type=int, default=1, help="processes to shard the batches over (gloo)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for opt in ("n", "procs", "batch_size"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 1, got {value}")
    return args


def in_zoo(spec: str, zoo: str | None) -> str:
    """``spec`` as given, or, when it names no file nor pretrained model, the zoo member of that name."""
    if zoo is None or spec in LITE or Path(spec).exists():
        return spec
    for name in CHECKPOINT_NAMES:
        if (Path(zoo) / spec / name).is_file():
            return str(Path(zoo) / spec / name)
    members = ", ".join(member_label(m) for m in zoo_members(zoo))
    raise FileNotFoundError(f"model {spec!r} is neither a checkpoint file, a pretrained name ({', '.join(LITE)}) nor "
                            f"a member of the zoo {zoo} ({members})")


def prepare(args: argparse.Namespace) -> dict:
    """Models, images and attacks, validated before any work (one-line errors)."""
    check_output_dir(args.out)
    zoo = zoo_members(args.zoo) if args.zoo else []
    sources = [in_zoo(s, args.zoo) for s in args.sources] if args.sources else zoo
    targets = [in_zoo(s, args.zoo) for s in args.targets] if args.targets else zoo
    if not sources or not targets:
        raise ValueError("transfer needs source and target models: pass --zoo DIR or --sources and --targets")
    loaded: dict[str, tuple[nn.Module, dict]] = {}
    labels: dict[str, str] = {}
    for spec in dict.fromkeys(sources + targets):
        key = str(Path(spec).resolve()) if Path(spec).exists() else spec  # the same file twice: one model
        if key not in loaded:
            loaded[key] = load_member(spec)
            label = member_label(spec)
            labels[key] = label if label not in labels.values() else f"{label}#{len(labels)}"
    key_of = {s: (str(Path(s).resolve()) if Path(s).exists() else s) for s in sources + targets}
    first_hp = loaded[key_of[sources[0]]][1]
    dataset = args.data or first_hp.get("dataset") or "mnist_embedded"
    n = args.n if args.n is not None else (None if dataset == "foolbox_imagenet" else 500)
    x, y = load_images(dataset, n, args.data_root, first_hp)
    return {"specs": load_suite(args.suite, dataset),
            "sources": {labels[key_of[s]]: loaded[key_of[s]][0] for s in sources},
            "targets": {labels[key_of[s]]: loaded[key_of[s]][0] for s in targets},
            "x": x, "y": y, "out": Path(args.out),
            "context": {"dataset": dataset, "suite": str(args.suite),
                        "models": {labels[k]: k for k in loaded}}}


def evaluate_transfer(args: argparse.Namespace, job: dict) -> dict:
    rank, world = dist_info()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    results = transfer_matrix(job["specs"], job["sources"], job["targets"], job["x"], job["y"], seeds=args.seeds,
                              batch_size=args.batch_size, quantize=not args.no_quantize, out_dir=job["out"],
                              context=job["context"], progress=not args.no_progress)
    if rank == 0:
        write_transfer_report(results, job["out"] / "transfer.md")
        plot_transfer(results, job["out"] / "transfer.png")
        print((job["out"] / "transfer.md").read_text())
        print(f"results: {job['out']}/transfer.json, transfer.md, transfer.png")
    return results


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    out = check_output_dir(args.out)
    with folder_lock(out, "transfer evaluation") if int(os.environ.get("RANK", "0")) == 0 else nullcontext():
        launch(evaluate_transfer, args.procs, args, prepare(args))
