#!/usr/bin/env python
"""Evaluate a train.py checkpoint against an attack suite (thesis 3.3.2 / 5.3 protocol).

    python evaluate.py --ckpt runs/demo/last.ckpt                       # reliable suite, 1000 images (or all)
    python evaluate.py --ckpt CKPT --suite thesis                       # the thesis settings (alias: full)
    python evaluate.py --ckpt CKPT --suite quick --n 500 --out runs/demo/eval
    python evaluate.py --ckpt CKPT --threat linf --budget linf=0.1       # one threat model, another budget
    python evaluate.py --ckpt CKPT --defense bit_depth:bits=3 --defense median:size=2   # BPDA by default
    python evaluate.py --ckpt CKPT --defense median:size=3 --view blackbox   # attacks ignore the defense
    python evaluate.py --ckpt CKPT --defense pixel_deflection --eot-samples 20 --score-draws 10   # randomized: EOT
    python evaluate.py --ckpt CKPT --defense patch_replacement:codebooks=runs/pr/patch_codebooks.safetensors
    python evaluate.py --ckpt CKPT --procs 2                             # shard over 2 processes (gloo)
    python evaluate.py --model c4 --weights c4.safetensors --data mnist_embedded   # any model, not a checkpoint
    python evaluate.py --model mypkg.models:load_robust --data cifar10   # a callable returning an nn.Module
    torchrun --nproc_per_node 2 evaluate.py --ckpt CKPT --images 500     # same, by torchrun (--n is its own)
    python evaluate.py --transfer --zoo runs/zoo     # source x target transfer matrix (evaluate.py --transfer -h)

Writes results.json (rewritten after every attack; a rerun skips finished attacks), report.md,
curves.png and examples.png to --out (default: <checkpoint folder>/eval).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from advtrain.cli import run_with_clean_errors  # noqa: E402
from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.defenses import DEFENSES, build_defense  # noqa: E402
from advtrain.registry import valid_options  # noqa: E402
from advtrain.defenses.defended import ATTACK_VIEWS, Defended  # noqa: E402
from advtrain.evaluation import load_suite, run_suite  # noqa: E402
from advtrain.evaluation.checkpoint import load_checkpoint  # noqa: E402
from advtrain.distributed import dist_info, launch  # noqa: E402
from advtrain.evaluation.external import load_model, safe_name  # noqa: E402
from advtrain.io.files import folder_lock  # noqa: E402
from advtrain.evaluation.guards import check_output_dir, check_run_options  # noqa: E402
from advtrain.evaluation.examples import load_rows  # noqa: E402
from advtrain.evaluation.report import log_wandb, plot_curves, plot_examples, write_report  # noqa: E402
from advtrain.evaluation.threats import parse_budgets, parse_threats, select_threats, standard_budgets  # noqa: E402

DEFAULT_N = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default=None, help="a train.py checkpoint (loaded with weights_only=True)")
    p.add_argument("--model", default=None, metavar="NAME|pkg.module:callable",
                   help="instead of --ckpt: a factory name (c4, timm:..., torchvision:...) or a callable "
                        "returning an nn.Module on [0, 1] pixels; needs --data")
    p.add_argument("--weights", default=None, help="with --model: weights file (weights_only / safetensors)")
    p.add_argument("--defense", action="append", default=[], metavar="NAME[:k=v,...]",
                   help="input defense in front of the classifier (repeat to compose, in order)")
    p.add_argument("--view", choices=ATTACK_VIEWS, default="bpda",
                   help="with defenses: bpda (default), direct (no BPDA) or blackbox (attacks see the bare model)")
    p.add_argument("--eot-samples", type=int, default=None, metavar="K",
                   help="random draws per attack gradient (EOT) on a randomized model (default 20 when two "
                        "forwards of a clean batch differ or a defense declares randomness, else 1)")
    p.add_argument("--score-draws", type=int, default=None, metavar="S",
                   help="draws each image is scored on for a randomized model: robust only if it survives all "
                        "(default 10 when randomized, else 1)")
    p.add_argument("--suite", default="reliable",
                   help="reliable (default: AutoAttack-like ensemble, minimum-norm attacks run to convergence), "
                        "thesis (the thesis' 20-iteration settings; alias full), quick, a name in "
                        "advtrain/evaluation/suites (demo, smoke, ...) or a YAML file")
    p.add_argument("--data", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-root", default=None, help="dataset root folder")
    p.add_argument("--n", "--images", dest="n", type=int, default=None,
                   help=f"test images N' (default {DEFAULT_N} or the whole test set); --images under torchrun")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--quantize", choices=("both", "yes", "no"), default="both",
                   help="score 8-bit quantized adversarial images, real-valued ones, or both (default)")
    p.add_argument("--d-upp", type=float, default=None, help="D_upp of P_upp (default per dataset)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logger", choices=("none", "wandb"), default="none")
    p.add_argument("--procs", type=int, default=1, help="processes to shard the test set over (gloo)")
    p.add_argument("--no-progress", action="store_true")
    # threat models (issue 20): which norms, and the budgets robust accuracy is reported at
    p.add_argument("--threat", default=None, metavar="NORM[,NORM]",
                   help="threat models to evaluate: l2, linf, l1 (default: every one the suite has attacks for); "
                        "the suite's attacks of other norms are left out")
    p.add_argument("--budget", default=None, metavar="NORM=EPS[,...]",
                   help="robust accuracy's budgets, e.g. linf=0.3,l2=2 (default: the dataset's standard ones, "
                        "MNIST Linf 0.3 / L2 2, CIFAR-10 Linf 8/255 / L2 0.5, ImageNet Linf 4/255 / L2 3); "
                        "the reliable suite's fixed-budget attacks run there")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.procs < 1:
        raise ValueError(f"--procs must be >= 1, got {args.procs}")
    if (args.ckpt is None) == (args.model is None):
        raise ValueError("give exactly one of --ckpt (a train.py checkpoint) or --model (any model)")
    if args.model is not None and args.data is None:
        raise ValueError("--model needs --data, the dataset to evaluate on (e.g. --data mnist_embedded)")
    if args.weights is not None and args.model is None:
        raise ValueError("--weights goes with --model (a checkpoint holds its own weights)")
    return args


def parse_defense(text: str) -> tuple[str, dict]:
    """``median:size=3`` -> ("median", {"size": 3}) (values parsed as YAML scalars)."""
    name, _, opts = text.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--defense {text!r}: options are NAME:key=value,key=value")
        options[key.strip()] = yaml.safe_load(value)
    return name.strip(), options


def apply_defenses(model: torch.nn.Module, specs: list[tuple[str, dict]]) -> torch.nn.Module:
    """Defenses that take the model (``patch_replacement:codebooks=FILE``) wrap it; input
    transforms are then composed in front of it, in the order given."""
    inputs = []
    for name, options in specs:
        if "model" in valid_options(DEFENSES[name]):
            model = build_defense(name, model=model, **options)
        else:
            inputs.append(build_defense(name, **options))
    return Defended(model, *inputs) if inputs else model


def prepare(args: argparse.Namespace, held: ExitStack | None = None) -> dict:
    """Everything a worker needs, validated up front so user errors are one clear line. With ``held``,
    the output folder is locked into it (rank 0: one run per folder, a second one refused now)."""
    check_run_options(n=args.n, d_upp=args.d_upp, quantize=args.quantize, view=args.view,
                      batch_size=args.batch_size, seed=args.seed, points=200)
    for flag, value in (("--eot-samples", args.eot_samples), ("--score-draws", args.score_draws)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.out:
        out = Path(args.out)
    else:
        out = Path(args.ckpt).resolve().parent / "eval" if args.ckpt else Path("runs", "eval", safe_name(args.model))
    check_output_dir(out)  # a file or a read-only folder: refused before any attack runs
    if held is not None and int(os.environ.get("RANK", "0")) == 0:
        held.enter_context(folder_lock(out, "evaluation"))  # until the report is written
    model, hp, dm_hp = load_checkpoint(args.ckpt) if args.ckpt else (None, {"model": args.model}, {})
    defenses = [parse_defense(d) for d in args.defense]
    defended = apply_defenses(model, defenses) if model is not None else None
    dataset = args.data or dm_hp.get("dataset") or "mnist_embedded"
    overrides = parse_budgets(args.budget)  # attack names, options, threat models, budgets: before any work
    select_threats(load_suite(args.suite, dataset, overrides), parse_threats(args.threat),
                   standard_budgets(dataset, overrides), overrides)
    same = dataset == dm_hp.get("dataset")
    dm = NamedDataModule(dataset=dataset, root=args.data_root or (dm_hp.get("root") if same else None),
                         image_size=dm_hp.get("image_size") if same else None, batch_size=args.batch_size)
    dm.setup("test")
    if defended is None:  # --model: its classes and channels are the dataset's
        defended = apply_defenses(load_model(args.model, args.weights, dm.num_classes, dm.image_shape[0]), defenses)
    test_set = dm.inner.test_set
    n = args.n if args.n is not None else min(DEFAULT_N, len(test_set))
    if n > len(test_set):
        raise ValueError(f"--n {n} is larger than the test set of {dataset} ({len(test_set)} images)")
    source = ({"checkpoint": str(Path(args.ckpt).resolve())} if args.ckpt else
              {"weights": str(Path(args.weights).resolve()) if args.weights else None})
    return {"model": defended, "dataset": dataset,
            "loader": DataLoader(Subset(test_set, range(n)), batch_size=args.batch_size), "n": n, "out": out,
            "context": {**source, "model": hp["model"]}}


def evaluate(args: argparse.Namespace, job: dict) -> dict:
    rank, world = dist_info()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    results = run_suite(job["model"], job["loader"], args.suite, dataset=job["dataset"], d_upp=args.d_upp,
                        quantize=args.quantize, view=args.view, n=job["n"], batch_size=args.batch_size,
                        seed=args.seed, out_dir=job["out"], context=job["context"],
                        progress=not args.no_progress, eot_samples=args.eot_samples, score_draws=args.score_draws,
                        threats=args.threat, budgets=args.budget)
    if rank == 0:
        out = job["out"]
        write_report(results, out / "report.md")
        if any(e.get("status") == "done" for e in results["attacks"].values()):  # no curve when all crashed
            plot_curves(results, out / "curves.png")
        plot_examples(load_rows(out), out / "examples.png")  # the unrestricted attacks' rows after the suite's
        if args.logger == "wandb":
            log_wandb(results, out)
        print((out / "report.md").read_text())
        print(f"results: {out}/results.json, report.md, curves.png, examples.png")
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--transfer" in argv:  # its own options: advtrain/cli/transfer.py
        from advtrain.cli.transfer import main as transfer_main
        return transfer_main([a for a in argv if a != "--transfer"])
    args = parse_args(argv)
    with ExitStack() as held:
        job = prepare(args, held)
        try:
            results = launch(evaluate, args.procs, args, job)  # rank 0's: torchrun's group, --procs processes, or here
        except KeyboardInterrupt:
            report_interrupted(job["out"])
    exit_if_an_attack_crashed(results, job["out"])


def report_interrupted(out: Path) -> None:
    """Ctrl-C mid-suite: report.md of the attacks that finished (results.json holds them, written after
    each), one line, exit 130; a rerun continues with the others."""
    path = out / "results.json"
    done = []
    if int(os.environ.get("RANK", "0")) == 0 and path.is_file():
        results = json.loads(path.read_text())
        done = [k for k, e in results["attacks"].items() if e.get("status") == "done"]
        write_report(results, out / "report.md")
    kept = f"{len(done)} finished attack(s) ({', '.join(done)}) in {path} and report.md" if done else \
        "no attack had finished"
    print(f"evaluate.py: interrupted: {kept}; rerun the same command to continue", file=sys.stderr)
    sys.exit(130)


def exit_if_an_attack_crashed(results: dict, out: Path) -> None:
    """A crashed attack is no result: the run exits 1 (the others' results are kept)."""
    crashed = {k: e.get("error") for k, e in results["attacks"].items() if e.get("status") == "error"}
    if crashed:
        label, error = next(iter(crashed.items()))
        print(f"evaluate.py: error: {len(crashed)} attack(s) crashed ({label}: {error}); the others' results are "
              f"in {out / 'results.json'}; rerun to retry", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_with_clean_errors(main, "evaluate.py")
