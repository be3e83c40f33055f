"""The evaluation protocol of thesis 3.3.2 and 5.3 over an attack suite: ``run_suite``.

Of the N' test images keep the N classified correctly (set X); per attack record, per image, the
least distortion in each norm (L2, Linf, L1) of a successful adversarial over its runs (the eps
sweep of distortion attacks), with and without 8-bit quantization; then P_suc, D-bar, P(D), P_upp
(eq. 3.1-3.2, ``metrics.py``, in L2 as the thesis), gradients and time, the per-sample worst case
over the suite, and per threat model (``threats.py``: the norm each attack bounds or minimizes) the
worst case over that norm's attacks and the robust accuracy at the standard budget.

``run_suite``'s steps: check the options, model and images; read back the finished attacks of the
output folder (``resume.py``); the set X; per pending attack, this rank's batches (``sweep.py``),
gathered into its entry; the conclusion (worst case and sanity checks, ``worst_case.py``) once per
finished attack; results.json and the examples (``examples.py``) saved after each.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..attacks import ATTACKS
from ..data import D_UPP
from ..defenses.defended import Defended
from ..defenses.eot import EOT, misclassified, plan_draws
from ..featspace.provision import provision
from ..io.fingerprint import weights_sha256
from ..ops.norms import within_budget
from ..distributed import batch_seed, broadcast, dist_info, gather, my_batches
from ..io.files import folder_lock
from ..nn.state import eval_mode
from .examples import ADVERSARIALS_FILE, UNRESTRICTED_EXAMPLES, Adversarials, load_adversarials, save_examples
from .guards import (QUANTIZE_CHOICES, as_labels, check_attacks_on, check_images, check_model, check_model_on,
                     check_output_dir, check_run_options)
from .perceptual import UNRESTRICTED, encoder_of
from .resume import RESULTS_VERSION, previous_results, write_json
from .resume import canon as _canon
from .suite import AttackSpec, load_suite
from .sweep import attack_batch, chunks, predict, summarize_attack, zero_grad_count
from .threats import parse_budgets, parse_threats, select_threats, standard_budgets
from .worst_case import conclude

__all__ = ["run_suite", "UNRESTRICTED_EXAMPLES"]


def _collect(dataloader: DataLoader | Any, n: int | None) -> tuple[Tensor, Tensor]:
    """The first ``n`` (default: all) images and labels of ``dataloader``, checked."""
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


def _provision(specs: list[AttackSpec], model: nn.Module, dataset: str, context: dict | None,
               out_dir: str | Path | None) -> list[AttackSpec]:
    """Unrestricted entries without their fitted files (D2B statistics, FSA encoder/decoder) get
    them, fitted on first use by rank 0 and cached beside the checkpoint (else in ``out_dir``)."""
    where = Path(context["checkpoint"]).parent if (context or {}).get("checkpoint") else out_dir
    if not any(s.family == UNRESTRICTED for s in specs):
        return specs
    if where is None:  # nowhere to fit them: refused now, not a crash after the other attacks ran
        lacking = [s.label for s in specs
                   if any(s.options.get(k) is None for k in getattr(ATTACKS[s.attack], "required_files", ()))]
        if lacking:
            raise ValueError(f"{', '.join(lacking)}: no files given and no out_dir to fit them into on first use: "
                             "pass out_dir or the files (python -m advtrain.featspace)")
        return specs

    def provided(s: AttackSpec) -> dict:
        try:
            return provision(s.attack, s.options, model, dataset, where)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as e:  # e.g. an unknown plane
            raise type(e)(f"{s.label}: {e}") from None
    options = [provided(s) if s.family == UNRESTRICTED else s.options
               for s in specs] if dist_info()[0] == 0 else None
    return [dataclasses.replace(s, options=o) for s, o in zip(specs, broadcast(options))]


@dataclass
class _Job:
    """What every attack of a run shares: the models, the N' images, the set X in batches (indices
    into the images) and the batches this rank computes."""

    model: nn.Module         # the evaluated model: success is scored on it
    attack_model: nn.Module  # what the attacks differentiate (the model, its BPDA or black-box view)
    x: Tensor
    y: Tensor
    batches: list[Tensor]
    mine: list[int]
    seed: int
    variants: tuple[str, ...]
    encoder: Any
    draws: int = 1           # calls of a randomized model an image is scored on (robust: survives all)


def _default_d_upp(dataset: str, d_upp: float | None) -> float:
    """``d_upp``, or the dataset's (thesis Table 5.2)."""
    if d_upp is not None:
        return d_upp
    if dataset not in D_UPP:
        raise ValueError(f"no default D_upp for dataset {dataset!r}; pass d_upp (known: {', '.join(D_UPP)})")
    return D_UPP[dataset]


def _context(model: nn.Module, context: dict | None, *, dataset: str, n_prime: int, d_upp: float, quantize: str,
             view: str, seed: int, batch_size: int, draws: dict) -> dict:
    """results["context"]: the caller's provenance, the run's settings, the defenses and the weights' hash
    (what a rerun must match to continue); ``randomness`` (EOT and scoring draws) unless the model is
    deterministic and evaluated with one draw."""
    defended = isinstance(model, Defended)
    plain = draws["randomized"] is None and draws["eot_samples"] == draws["score_draws"] == 1
    return {**(context or {}), "dataset": dataset, "n_prime": n_prime, "d_upp": d_upp, "quantize": quantize,
            "view": view if defended else "plain", "seed": seed, "batch_size": batch_size,
            "defenses": [repr(d) for d in model.defenses] if defended else [],
            "bpda_approximated": model.approximated if defended and view == "bpda" else [],
            **({} if plain else {"randomness": draws}), "model_sha256": weights_sha256(model)}


def _resume(out_dir: Path | None, ctx: dict, specs: list[AttackSpec]) -> dict:
    """The results to continue: the finished attacks of ``out_dir``'s results.json when it evaluated the
    same model with the same settings (read by rank 0, shared with all); an error otherwise."""
    previous = previous_results(out_dir / "results.json", ctx, specs) \
        if out_dir is not None and dist_info()[0] == 0 else {}
    previous = broadcast(previous)
    if previous.get("error"):
        raise ValueError(previous["error"])
    return {"version": RESULTS_VERSION, "context": ctx, "attacks": previous.get("attacks", {})}


def _resumed_adversarials(out_dir: Path | None, resumed: bool) -> dict[str, Adversarials]:
    """The examples' stores (the suite's, the unrestricted attacks' apart): rank 0 continues those of the
    run it resumes; a fresh run and the other ranks start empty."""
    if out_dir is not None and resumed and dist_info()[0] == 0:
        return load_adversarials(out_dir / ADVERSARIALS_FILE)
    return {"suite": Adversarials(), "unrestricted": Adversarials()}


def _clean_set(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, seed: int, draws: int) -> Tensor:
    """The set X: indices (sorted, on the CPU) of the images classified correctly without attack (by
    each of ``draws`` calls of a randomized model), computed sharded and gathered on every rank."""
    batches = chunks(torch.arange(len(y)), batch_size)
    correct = []
    for b in my_batches(len(batches)):
        idx = batches[b]
        torch.manual_seed(batch_seed(seed, "clean", b))
        correct.append(idx[(~misclassified(model, x[idx], y[idx], draws)).cpu()])
    kept = torch.cat([c for r in gather(correct) for c in r] or [torch.zeros(0, dtype=torch.long)])
    return kept.sort().values.cpu()


def _pending(specs: list[AttackSpec], results: dict) -> list[AttackSpec]:
    """The attacks still to run (rank 0 names the ones a previous run finished)."""
    todo = [s for s in specs if s.label not in results["attacks"]]
    for s in specs:
        if s not in todo and dist_info()[0] == 0:
            print(f"[run_suite] {s.label}: finished in a previous run, skipped")
    return todo


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    """A tqdm bar over ``total`` batches on rank 0 when ``enabled``, else None."""
    if not enabled or dist_info()[0] != 0:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="attacks", unit="batch")
    try:
        yield bar
    finally:
        bar.close()


def _cascade_skip(spec: AttackSpec, results: dict, job: _Job) -> list[Tensor] | None:
    """For a cascaded fixed-budget attack, per run: the images of X (in order) already broken within
    its budget, in every variant, by the finished attacks of its norm (AutoAttack's cascade)."""
    if not spec.cascade:
        return None
    norm = spec.threat
    earlier = [e for e in results["attacks"].values() if e.get("status") == "done" and e.get("norm") == norm]
    n = sum(len(b) for b in job.batches)
    least = torch.full((len(job.variants), n), float("inf"), dtype=torch.float64)
    for i, v in enumerate(job.variants):
        for e in earlier:
            d = torch.tensor([float("inf") if t is None else t for t in e[v]["per_sample"][norm]], dtype=torch.float64)
            least[i] = torch.minimum(least[i], d)
    return [within_budget(least, eps).all(dim=0) for eps in spec.runs()]


def _attack_my_batches(spec: AttackSpec, job: _Job, bar: Any, skip: list[Tensor] | None = None) -> dict:
    """One attack on this rank's batches: the per-batch outputs (``parts``), its least-distortion
    adversarials (``adversarials``, of the last variant: the quantized one when both are scored), and the
    error that stopped it (one attack's crash must not lose the others' results)."""
    t0 = time.perf_counter()
    parts, error, found = [], None, Adversarials()
    starts = [0]
    for batch in job.batches:
        starts.append(starts[-1] + len(batch))
    try:
        for b in job.mine:
            idx = job.batches[b]
            x, y = job.x[idx], job.y[idx]
            torch.manual_seed(batch_seed(job.seed, spec.label, b))
            mine = None if skip is None else [s[starts[b]:starts[b + 1]] for s in skip]
            part = attack_batch(spec, job.attack_model, job.model, x, y, job.variants, job.encoder, mine, job.draws)
            part.update(batch=b, zero_grad=zero_grad_count(spec, job.attack_model, x, y))
            v0 = job.variants[-1]
            best = part[v0]["best"]
            found.offer(idx, x, best, part[v0]["l2"], part[v0]["found"], predict(job.model, best), spec.label)
            for v in job.variants:
                del part[v]["best"]
            parts.append(part)
            if bar is not None:
                bar.set_description(spec.label)
                bar.update(1)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    return {"parts": parts, "error": error, "time": time.perf_counter() - t0, "adversarials": found.items}


def _record(results: dict, stores: dict[str, Adversarials], spec: AttackSpec, gathered: list[dict], n: int,
            variants: tuple[str, ...], d_upp: float, points: int) -> None:
    """The attack's entry from every rank's output: its statistics and its adversarials offered to the
    examples (the unrestricted attacks' apart), or the first rank's error (and no examples: a crashed
    attack's partial successes are in no statistic)."""
    errors = [g["error"] for g in gathered if g["error"]]
    if errors:
        results["attacks"][spec.label] = {"attack": spec.attack, "key": spec.as_dict(), "status": "error",
                                          "error": errors[0]}
        return
    entry = summarize_attack(spec, [p for g in gathered for p in g["parts"]], n, variants, d_upp, points)
    entry["time_s"] = max(g["time"] for g in gathered)
    results["attacks"][spec.label] = entry
    stores["unrestricted" if spec.family == UNRESTRICTED else "suite"].merge([g["adversarials"] for g in gathered])


def _save(out_dir: Path | None, results: dict, stores: dict[str, Adversarials], job: _Job) -> None:
    """results.json and the examples, by rank 0 (after every attack: a rerun continues from them)."""
    if dist_info()[0] != 0 or out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    save_examples(out_dir, stores, results["context"]["indices"], job.x, job.y)


def _owning_out_dir(fn: Callable[..., dict]) -> Callable[..., dict]:
    """``fn`` holding its ``out_dir`` (rank 0, the writer): one run per folder (``advtrain/io/files.py``)."""
    @functools.wraps(fn)
    def owner(*args: Any, **kw: Any) -> dict:
        out = kw.get("out_dir")
        if out is None or dist_info()[0] != 0:
            return fn(*args, **kw)
        with folder_lock(check_output_dir(out), "evaluation"):
            return fn(*args, **kw)
    return owner


@_owning_out_dir
def run_suite(model: nn.Module, dataloader: DataLoader | Any, suite: str | list | Path = "full", *,
              dataset: str = "mnist_embedded", d_upp: float | None = None, quantize: str = "both",
              view: str = "bpda", approx: dict[str, Callable] | None = None, n: int | None = None,
              batch_size: int = 100, seed: int = 0, out_dir: str | Path | None = None,
              context: dict | None = None, progress: bool = True, points: int = 200,
              eot_samples: int | None = None, score_draws: int | None = None,
              threats: str | list[str] | None = None, budgets: str | dict[str, float] | None = None) -> dict:
    """Run an attack suite against ``model`` and return the results (as written to results.json).

    Args:
        model: the evaluated classifier, possibly a ``Defended``; pixels in [0, 1].
        dataloader: yields (images, labels); the first ``n`` images form the test set of N' images.
        suite: ``"full"`` (every registered attack, thesis settings for ``dataset``), a suite name in
            ``advtrain/evaluation/suites``, a YAML file or a list of attack configs.
        d_upp: P_upp's budget; default ``D_UPP[dataset]`` (thesis Table 5.2).
        quantize: ``"both"``, ``"yes"`` (8-bit adversarial images only) or ``"no"``.
        view: for a ``Defended`` model, what the attacks differentiate: ``"bpda"`` (default; defenses
            declaring ``needs_bpda`` are approximated by BPDA), ``"direct"`` (no BPDA) or ``"blackbox"`` (the
            undefended model; success still scored on the defended one, thesis Table 6.2).
        out_dir: results.json and the examples (examples.pt, adversarials.pt) are written there after
            every attack; a rerun skips finished attacks.
        context: extra provenance recorded in the results (checkpoint, defenses, ...).
        eot_samples: random draws per attack gradient (EOT, ``advtrain.defenses.eot``); default 20 when
            the attacked model is randomized (two forwards of a clean batch differ, or a defense
            declares it), else 1. ``score_draws``: draws each image is scored on, clean and adversarial
            (it counts as robust only if it survives every one); default 10 when randomized, else 1.
        threats: the threat models (norms, ``"l2,linf"`` or a list) to evaluate; default every one the
            suite has attacks for. The suite's attacks of other norms are left out.
        budgets: the standard budgets' overrides (``"linf=0.3,l2=2"`` or a dict; default
            ``threats.STANDARD_BUDGETS`` of the dataset): robust accuracy is reported there, and the
            reliable suite's fixed-budget attacks run there.
    Under torch.distributed the batches are sharded across ranks; every rank returns the results.
    """
    check_run_options(n=n, d_upp=d_upp, quantize=quantize, view=view, batch_size=batch_size, seed=seed,
                      points=points)
    check_model(model)
    d_upp = _default_d_upp(dataset, d_upp)
    variants = QUANTIZE_CHOICES[quantize]
    overrides = parse_budgets(budgets)
    std = standard_budgets(dataset, overrides)
    specs, chosen = select_threats(load_suite(suite, dataset, overrides), parse_threats(threats), std, overrides)
    attack_model = model.attack_view(view, approx) if isinstance(model, Defended) else model
    specs = _provision(specs, attack_model, dataset, context, out_dir)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:  # every rank: one refusing alone would leave the others waiting
        check_output_dir(out)
    x_all, y_all = _collect(dataloader, n)
    device = next(iter(model.parameters()), torch.zeros(0)).device
    x_all, y_all = x_all.to(device), y_all.to(device)
    with eval_mode(model):  # before any other forward: a model that cannot take these images is one line
        check_model_on(model, x_all[:batch_size], y_all[:batch_size])
    with eval_mode(model), eval_mode(attack_model):  # randomized? (rank 0's answer for all)
        draws = broadcast(plan_draws(model, attack_model, x_all[:batch_size], eot_samples, score_draws))
    if draws["eot_samples"] > 1:
        attack_model = EOT(attack_model, draws["eot_samples"])
    ctx = _context(model, context, dataset=dataset, n_prime=len(y_all), d_upp=d_upp, quantize=quantize, view=view,
                   seed=seed, batch_size=batch_size, draws=draws)
    ctx.update(threats=chosen, budgets={t: std[t] for t in chosen})
    results = _resume(out, ctx, specs)
    stores = _resumed_adversarials(out, bool(results["attacks"]))

    with eval_mode(model):
        check_attacks_on(specs, attack_model, x_all[:batch_size])
        X = _clean_set(model, x_all, y_all, batch_size, seed, draws["score_draws"])
        results["context"].update(n=len(X), accuracy=len(X) / max(len(y_all), 1), indices=X.tolist())
        batches = chunks(X, batch_size)
        job = _Job(model, attack_model, x_all, y_all, batches, my_batches(len(batches)), seed, variants,
                   encoder_of(specs), draws["score_draws"])
        todo = _pending(specs, results)
        with _progress(len(todo) * len(job.mine), progress) as bar:
            for spec in todo:
                gathered = gather(_attack_my_batches(spec, job, bar, _cascade_skip(spec, results, job)))
                _record(results, stores, spec, gathered, len(X), variants, d_upp, points)
                conclude(results, variants, d_upp, points)
                _save(out, results, stores, job)
    if not todo:  # everything finished before: conclude what was read back
        conclude(results, variants, d_upp, points)
    return _canon(results)
