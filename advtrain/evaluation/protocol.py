"""The evaluation protocol of thesis 3.3.2 and 5.3 over an attack suite: ``run_suite``.

Of the N' test images keep the N classified correctly (set X); per attack record, per image, the
least L2 distortion of a successful adversarial over its runs (the eps sweep of distortion
attacks), with and without 8-bit quantization; then P_suc, D-bar, P(D), P_upp (eq. 3.1-3.2,
``metrics.py``), Linf, gradients and time, and the per-sample worst case over the suite.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..attacks.base import AttackContext, BestTracker, frozen_eval
from ..ops.norms import l2_norm, linf_norm, quantize as quantize_8bit
from ..data import D_UPP
from ..defenses.defended import Defended
from ..models.fingerprint import weights_sha256
from .distributed import batch_seed, broadcast, dist_info, gather, my_batches
from .guards import (QUANTIZE_CHOICES, as_labels, check_images, check_model, check_model_on, check_output_dir,
                     check_run_options)
from .metrics import least_distortion, per_sample_distortion, summarize
from .perceptual import UNRESTRICTED, encoder_of, perceptual, summarize_perceptual
from .sanity import failed_checks, sanity_warnings
from .suite import AttackSpec, load_suite

EXAMPLES = 8  # worst-case images kept for examples.png
UNRESTRICTED_EXAMPLES = "examples_unrestricted.pt"  # the unrestricted attacks' own rows of examples.png


def _collect(dataloader: DataLoader | Any, n: int | None) -> tuple[Tensor, Tensor]:
    xs, ys, have = [], [], 0
    for batch in dataloader:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TypeError(f"the dataloader must yield (images, labels) pairs, got {type(batch).__name__}")
        x, y = batch
        check_images(x)
        y = as_labels(y)
        if len(y) != len(x):
            raise ValueError(f"a batch has {len(x)} images but {len(y)} labels")
        xs.append(x), ys.append(y)
        have += len(y)
        if n is not None and have >= n:
            break
    if not xs:
        raise ValueError("the dataloader yielded no images")
    x, y = torch.cat(xs), torch.cat(ys)
    if n is not None and n > len(y):
        raise ValueError(f"n={n} is larger than the test set ({len(y)} images)")
    return (x[:n], y[:n]) if n is not None else (x, y)


def _chunks(idx: Tensor, size: int) -> list[Tensor]:
    return list(idx.split(size)) if len(idx) else []


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


class _Examples:
    """The ``EXAMPLES`` images of least worst-case distortion, with the adversarial achieving it."""

    def __init__(self, items: list | None = None) -> None:
        self.items: dict[int, dict] = {it["index"]: it for it in (items or [])}

    def offer(self, index: Tensor, x: Tensor, x_adv: Tensor, l2: Tensor, found: Tensor, label: str) -> None:
        for i in found.nonzero().flatten().tolist():
            k, d = int(index[i]), float(l2[i])
            if k in self.items and self.items[k]["l2"] <= d:
                continue
            self.items[k] = {"index": k, "l2": d, "attack": label, "x": x[i].cpu(), "x_adv": x_adv[i].cpu()}
        for k in sorted(self.items, key=lambda k: self.items[k]["l2"])[EXAMPLES:]:
            del self.items[k]

    def merge(self, others: list[list[dict]]) -> None:
        for items in others:
            for it in items:
                if it["index"] not in self.items or it["l2"] < self.items[it["index"]]["l2"]:
                    self.items[it["index"]] = it
        for k in sorted(self.items, key=lambda k: self.items[k]["l2"])[EXAMPLES:]:
            del self.items[k]

    def sorted(self) -> list[dict]:
        return sorted(self.items.values(), key=lambda it: it["l2"])


def _attack_batch(spec: AttackSpec, attack_model: nn.Module, score_model: nn.Module, x: Tensor, y: Tensor,
                  variants: tuple[str, ...], encoder: Any = None) -> dict:
    """All runs of one attack on one batch: per variant the least-distortion success over runs."""
    trackers = {v: BestTracker(x) for v in variants}
    by_budget: dict[str, list[int]] = {v: [] for v in variants}
    grads: list[int] = []
    for eps in spec.runs():
        if spec.quantize_mode == "post":
            res = spec.build(eps)(attack_model, x, y)
            grads.append(res.grads)
            advs = {v: quantize_8bit(res.x_adv) if v == "quantized" else res.x_adv for v in variants}
        else:
            advs = {}
            for v in variants:
                res = spec.build(eps, quantize=v == "quantized")(attack_model, x, y)
                grads.append(res.grads)
                advs[v] = res.x_adv
        for v, x_adv in advs.items():
            success = _predict(score_model, x_adv) != y  # scored on the evaluated (defended) model
            trackers[v].update(x_adv, success)
            by_budget[v].append(int(success.sum()))
    out: dict[str, Any] = {"grads": grads}
    for v, t in trackers.items():
        best, found = t.result()
        out[v] = {"found": found.cpu(), "l2": t.best_l2.cpu(), "linf": linf_norm(best - x).cpu(),
                  "best": best.detach(), "by_budget": by_budget[v], "perceptual": perceptual(x, best, encoder)}
    return out


def _zero_grad_count(spec: AttackSpec, attack_model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Images whose attack-loss gradient at the clean input is exactly zero (gradient masking)."""
    loss_fn = spec.build(spec.runs()[0]).loss_fn
    with frozen_eval(attack_model), torch.enable_grad():
        _, _, g = AttackContext(attack_model, x, y, None, loss_fn).loss_and_grad(x)
    return int((l2_norm(g) == 0).sum())


def _finite(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))) else v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return _finite(obj) if isinstance(obj, float) else obj


def _canon(obj: Any) -> Any:
    """As it reads back from JSON (for comparisons with a previous results.json)."""
    return json.loads(json.dumps(_jsonable(obj)))


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1))
    tmp.replace(path)


def _summarize_attack(spec: AttackSpec, parts: list[dict], n: int, variants: tuple[str, ...], d_upp: float,
                      points: int) -> dict:
    """Assemble the per-batch outputs of all ranks (sorted by batch) into the attack's entry."""
    parts = sorted(parts, key=lambda p: p["batch"])
    sizes = [len(p[variants[0]]["found"]) for p in parts]
    entry: dict[str, Any] = {
        "attack": spec.attack, "family": spec.family, "key": spec.as_dict(), "status": "done",
        "grads": sum(sum(p["grads"]) * s for p, s in zip(parts, sizes)) / max(n, 1),
        "grads_per_run": max((g for p in parts for g in p["grads"]), default=0),
        "zero_grad_rate": sum(p["zero_grad"] for p in parts) / max(n, 1),
    }
    for v in variants:
        found = torch.cat([p[v]["found"] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool)
        l2 = torch.cat([p[v]["l2"] for p in parts]).double() if parts else torch.zeros(0)
        linf = torch.cat([p[v]["linf"] for p in parts]).double() if parts else torch.zeros(0)
        stats = summarize(found, l2, d_upp, points)
        stats["linf_mean"] = float(linf[found].mean()) if bool(found.any()) else float("nan")
        runs = spec.runs()
        stats["p_suc_by_budget"] = [
            {"eps": eps, "p_suc": sum(p[v]["by_budget"][i] for p in parts) / max(n, 1)}
            for i, eps in enumerate(runs)] if spec.budgets is not None else []
        stats["per_sample"] = {"l2": [d if f else None for d, f in zip(l2.tolist(), found.tolist())],
                               "linf": [d if f else None for d, f in zip(linf.tolist(), found.tolist())]}
        per = {k: torch.cat([p[v]["perceptual"][k] for p in parts]) for k in (parts[0][v]["perceptual"] if parts else [])}
        stats["perceptual"] = summarize_perceptual(found, per)
        stats["per_sample"]["ssim"] = [d if f else None for d, f in zip(per["ssim"].tolist(), found.tolist())] \
            if "ssim" in per else []
        entry[v] = stats
    return entry


def _worst_case(attacks: dict, variants: tuple[str, ...], n: int, d_upp: float, points: int) -> dict:
    """Per image, the least distortion any attack of the suite needed (thesis 3.3.2 over attacks)."""
    done = {k: e for k, e in attacks.items() if e.get("status") == "done"}
    out = {}
    for v in variants:
        if not done:
            continue
        runs = [per_sample_distortion(e[v]) for e in done.values()]
        success, dist = least_distortion(torch.stack([s for s, _ in runs]), torch.stack([d for _, d in runs]))
        best_attack = torch.stack([d for _, d in runs]).argmin(dim=0)
        labels = list(done)
        stats = summarize(success, dist, d_upp, points)
        stats["by_attack"] = {lab: int(((best_attack == i) & success).sum()) for i, lab in enumerate(labels)}
        stats["per_sample"] = {"l2": [d if f else None for d, f in zip(dist.tolist(), success.tolist())]}
        out[v] = stats
    return out


#: context entries that say where, not what: a rerun may change them and keep the finished results
PROVENANCE = ("checkpoint",)
_WHAT = {"model_sha256": "model weights", "n_prime": "number of test images n"}


def _previous_results(path: Path, ctx: dict, specs: list[AttackSpec]) -> dict:
    """Finished attacks of an earlier run into the same folder, when it evaluated the same model with
    the same settings; otherwise ``{"error": ...}``: finished results are never mixed nor overwritten."""
    if not path.is_file():
        return {"attacks": {}}
    keep = "they are kept; choose another output folder (or move them away)"
    try:
        old = json.loads(path.read_text())
        old_ctx, old_attacks = old["context"], old["attacks"]
        assert isinstance(old_ctx, dict) and isinstance(old_attacks, dict)
    except (ValueError, KeyError, TypeError, AssertionError, OSError):
        return {"error": f"{path} is not a readable results.json of run_suite: {keep}"}
    new = _canon(ctx)
    differ = [_WHAT.get(k, k) for k in new if k not in PROVENANCE and old_ctx.get(k) != new[k]]
    if differ:
        return {"error": f"{path.parent} holds results of another evaluation (different {', '.join(differ)}): {keep}"}
    done = {k: e for k, e in old_attacks.items() if isinstance(e, dict) and e.get("status") == "done"}
    changed = [s.label for s in specs if s.label in done and done[s.label].get("key") != _canon(s.as_dict())]
    if changed:
        return {"error": f"{path.parent} holds finished results of {', '.join(changed)} with other attack options: "
                         f"give the changed entries new labels or {keep.split('; ')[1]}"}
    return {"attacks": done}


def _provision(specs: list[AttackSpec], model: nn.Module, dataset: str, context: dict | None,
               out_dir: str | Path | None) -> list[AttackSpec]:
    """Unrestricted entries without their fitted files (D2B statistics, FSA encoder/decoder) get
    them, fitted on first use by rank 0 and cached beside the checkpoint (else in ``out_dir``)."""
    where = Path(context["checkpoint"]).parent if (context or {}).get("checkpoint") else out_dir
    if where is None or not any(s.family == UNRESTRICTED for s in specs):
        return specs
    from ..featspace.provision import provision
    options = [provision(s.attack, s.options, model, dataset, where) if s.family == UNRESTRICTED else s.options
               for s in specs] if dist_info()[0] == 0 else None
    return [dataclasses.replace(s, options=o) for s, o in zip(specs, broadcast(options))]


def run_suite(model: nn.Module, dataloader: DataLoader | Any, suite: str | list | Path = "full", *,
              dataset: str = "mnist_embedded", d_upp: float | None = None, quantize: str = "both",
              view: str = "bpda", approx: dict[str, Callable] | None = None, n: int | None = None,
              batch_size: int = 100, seed: int = 0, out_dir: str | Path | None = None,
              context: dict | None = None, progress: bool = True, points: int = 200) -> dict:
    """Run an attack suite against ``model`` and return the results (as written to results.json).

    Args:
        model: the evaluated classifier, possibly a ``Defended``; pixels in [0, 1].
        dataloader: yields (images, labels); the first ``n`` images form the test set of N' images.
        suite: ``"full"`` (every registered attack, thesis settings for ``dataset``), a suite name in
            ``advtrain/evaluation/suites``, a YAML file or a list of attack configs.
        d_upp: P_upp's budget; default ``D_UPP[dataset]`` (thesis Table 5.2).
        quantize: ``"both"``, ``"yes"`` (8-bit adversarial images only) or ``"no"``.
        view: for a ``Defended`` model, what the attacks differentiate: ``"bpda"`` (default; non-
            differentiable defenses get BPDA), ``"direct"`` (no BPDA) or ``"blackbox"`` (the
            undefended model; success still scored on the defended one, thesis Table 6.2).
        out_dir: results.json is written there after every attack; a rerun skips finished attacks.
        context: extra provenance recorded in the results (checkpoint, defenses, ...).
    Under torch.distributed the batches are sharded across ranks; every rank returns the results.
    """
    check_run_options(n=n, d_upp=d_upp, quantize=quantize, view=view, batch_size=batch_size, seed=seed,
                      points=points)
    check_model(model)
    if d_upp is None:
        if dataset not in D_UPP:
            raise ValueError(f"no default D_upp for dataset {dataset!r}; pass d_upp (known: {', '.join(D_UPP)})")
        d_upp = D_UPP[dataset]
    variants = QUANTIZE_CHOICES[quantize]
    specs = load_suite(suite, dataset)
    defended = isinstance(model, Defended)
    attack_model = model.attack_view(view, approx) if defended else model
    specs = _provision(specs, attack_model, dataset, context, out_dir)
    encoder = encoder_of(specs)
    approximated = model.approximated if defended and view == "bpda" else []
    rank, world = dist_info()
    if out_dir is not None:  # every rank: one refusing alone would leave the others waiting
        check_output_dir(out_dir)
    x_all, y_all = _collect(dataloader, n)
    device = next(iter(model.parameters()), torch.zeros(0)).device
    x_all, y_all = x_all.to(device), y_all.to(device)

    ctx = {**(context or {}), "dataset": dataset, "n_prime": len(y_all), "d_upp": d_upp, "quantize": quantize,
           "view": view if defended else "plain", "seed": seed, "batch_size": batch_size,
           "defenses": [repr(d) for d in model.defenses] if defended else [], "bpda_approximated": approximated,
           "model_sha256": weights_sha256(model)}
    out_path = Path(out_dir) / "results.json" if out_dir is not None else None
    previous = _previous_results(out_path, ctx, specs) if rank == 0 and out_path is not None else {}
    previous = broadcast(previous)
    if previous.get("error"):
        raise ValueError(previous["error"])
    results = {"context": ctx, "attacks": previous.get("attacks", {})}
    examples = _Examples()
    if rank == 0 and out_dir is not None and (Path(out_dir) / "examples.pt").is_file() and results["attacks"]:
        try:
            examples = _Examples(torch.load(Path(out_dir) / "examples.pt", weights_only=True))
        except (RuntimeError, EOFError, OSError, ValueError):
            warnings.warn(f"{Path(out_dir) / 'examples.pt'} is unreadable: examples.png shows this run's only")
    uexamples = _Examples()  # unrestricted attacks' examples apart (UNRESTRICTED_EXAMPLES)
    if rank == 0 and out_dir is not None and (Path(out_dir) / UNRESTRICTED_EXAMPLES).is_file() and results["attacks"]:
        try:
            uexamples = _Examples(torch.load(Path(out_dir) / UNRESTRICTED_EXAMPLES, weights_only=True))
        except (RuntimeError, EOFError, OSError, ValueError):
            warnings.warn(f"{Path(out_dir) / UNRESTRICTED_EXAMPLES} is unreadable: examples.png shows this run's only")

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        check_model_on(model, x_all[:batch_size], y_all[:batch_size])
        # the set X: images classified correctly without attack
        batches = _chunks(torch.arange(len(y_all)), batch_size)
        correct = []
        for b in my_batches(len(batches)):
            idx = batches[b]
            torch.manual_seed(batch_seed(seed, "clean", b))
            correct.append(idx[(_predict(model, x_all[idx]) == y_all[idx]).cpu()])
        kept = torch.cat([c for r in gather(correct) for c in r] or [torch.zeros(0, dtype=torch.long)])
        X = kept.sort().values.cpu()
        results["context"].update(n=len(X), accuracy=len(X) / max(len(y_all), 1), indices=X.tolist())
        batches = _chunks(X, batch_size)
        mine = my_batches(len(batches))

        todo = [s for s in specs if s.label not in results["attacks"]]
        for s in specs:
            if s not in todo and rank == 0:
                print(f"[run_suite] {s.label}: finished in a previous run, skipped")
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(todo) * len(mine), desc="attacks", unit="batch")
        for spec in todo:
            t0 = time.perf_counter()
            parts, error = [], None
            try:
                for b in mine:
                    idx = batches[b]
                    x, y = x_all[idx], y_all[idx]
                    torch.manual_seed(batch_seed(seed, spec.label, b))
                    part = _attack_batch(spec, attack_model, model, x, y, variants, encoder)
                    part.update(batch=b, zero_grad=_zero_grad_count(spec, attack_model, x, y))
                    v0 = variants[-1]
                    (uexamples if spec.family == UNRESTRICTED else examples).offer(idx, x, part[v0]["best"], part[v0]["l2"], part[v0]["found"], spec.label)
                    for v in variants:
                        del part[v]["best"]
                    parts.append(part)
                    if bar is not None:
                        bar.set_description(spec.label)
                        bar.update(1)
            except Exception as e:  # one attack's crash must not lose the others' results
                error = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            gathered = gather({"parts": parts, "error": error, "time": time.perf_counter() - t0,
                               "examples": list(examples.items.values()),
                               "uexamples": list(uexamples.items.values())})
            errors = [g["error"] for g in gathered if g["error"]]
            if errors:
                results["attacks"][spec.label] = {"attack": spec.attack, "key": spec.as_dict(), "status": "error",
                                                  "error": errors[0]}
            else:
                entry = _summarize_attack(spec, [p for g in gathered for p in g["parts"]], len(X), variants,
                                          d_upp, points)
                entry["time_s"] = max(g["time"] for g in gathered)
                results["attacks"][spec.label] = entry
            examples.merge([g["examples"] for g in gathered])
            uexamples.merge([g["uexamples"] for g in gathered])
            results["worst_case"] = _worst_case(results["attacks"], variants, len(X), d_upp, points)
            results["warnings"], results["failed_checks"] = sanity_warnings(results), failed_checks(results)
            if rank == 0 and out_path is not None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                _write_json(out_path, results)
                torch.save(examples.sorted(), Path(out_dir) / "examples.pt")
                if uexamples.items:
                    torch.save(uexamples.sorted(), Path(out_dir) / UNRESTRICTED_EXAMPLES)
        if bar is not None:
            bar.close()
    finally:
        for m, mode in modes.items():
            m.training = mode
    results["worst_case"] = _worst_case(results["attacks"], variants, len(X), d_upp, points)
    results["warnings"], results["failed_checks"] = sanity_warnings(results), failed_checks(results)
    return _canon(results)
