"""Attack suites: a YAML list of attack configs or a built-in one:

- ``reliable`` (evaluate.py's default): an AutoAttack-like fixed ensemble per threat model (Croce &
  Hein 2020): in L2 and in Linf, APGD-CE, APGD-T, FAB-T, Square at the standard budgets, and
  minimum-norm attacks (FMN, FAB; BP, DDN in L2) run long enough to reach the minimal distortion;
  in L1 (where the dataset has a standard L1 budget) l1-APGD-CE, FAB-T and l1-APGD-T (Croce & Hein 2021);
  its per-image worst case per threat model is the headline.
- ``thesis`` (alias ``full``): every registered attack with the thesis' settings for the dataset
  (thesis 5.3.1, Table 5.2: 20-iteration rows), except the "unrestricted" family (D2B, FSA: no Lp
  budget, fitted files), which suites list explicitly. On adversarially trained models these short runs
  overstate robustness (issue 11: 2.3x in D-bar on a Madry MNIST net); use them to reproduce
  the thesis, not to certify a model.
- ``quick``: ``thesis`` made cheap.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..attacks import ATTACKS, Attack, build_attack
from ..ops.checks import check_positive
from ..data.specs import dataset_spec
from ..registry import check_kwargs, valid_options
from .threats import STANDARD_BUDGETS

#: the named suite files (package data: found in an installed package too)
SUITES_DIR = files(__package__) / "suites"
SPEC_KEYS = ("attack", "label", "options", "budgets", "quantize_mode", "cascade")
#: "post": round the returned images (thesis 5.3, same as the attacks' own final rounding);
#: "attack": the attack quantizes inside its loop (DDN, BP round each iterate), run it with quantize=True
QUANTIZE_MODES = ("post", "attack")

_LINF = {"mnist": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
         "cifar10": [1 / 255, 2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255, 24 / 255, 32 / 255],
         "imagenet": [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255]}
_L2 = {"mnist": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
       "cifar10": [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0],
       "imagenet": [0.25, 0.5, 1.0, 2.0, 3.0, 5.0]}
_B = {"linf": _LINF, "l2": _L2}
#: L1 sweeps around the standard L1 budgets (MNIST 10, CIFAR-10 12; ImageNet has none: no L1 rows)
_L1 = {"mnist": [2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 30.0],
       "cifar10": [2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]}
_STOP = {"steps": 20, "early_stop": True}
_CW = {"mnist": {"lr": 0.5, "initial_const": 1.0}, "cifar10": {"lr": 0.1, "initial_const": 0.1},
       "imagenet": {"lr": 0.01, "initial_const": 20.0}}

#: sC&W, thesis 4.4.1 (MNIST: mu = 1, eta = 0.1, c = 15; ImageNet: mu = 0, eta = 0.1, c = 100); CIFAR10 is
#: not in chapter 4: MNIST's values
_SCW = {"mnist": {"confidence": 1.0, "lr": 0.1, "initial_const": 15.0},
        "cifar10": {"confidence": 1.0, "lr": 0.1, "initial_const": 15.0},
        "imagenet": {"confidence": 0.0, "lr": 0.1, "initial_const": 100.0}}

#: per attack: group -> spec fields (thesis 5.3.1: alpha=0.08 for I-FGSM, eps/2 (MNIST, CIFAR) or
#: 3 (ImageNet) for PGD2, C&W 5 x 20 with the learning rate / initial constant per dataset,
#: DDN and BP defaults with 20 iterations). Distortion attacks sweep the budgets (eps); iterative
#: ones stop early per sample (the first adversarial iterate is the least distorted one they see).
#: Attacks that round inside their loop (DDN, BP, C&W's best rounded iterate) run once per variant.
THESIS_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "fgsm": {g: {"budgets": b} for g, b in _LINF.items()},
    "ifgsm": {g: {"options": {**_STOP, "alpha": 0.08}, "budgets": b} for g, b in _LINF.items()},
    "pgd_linf": {g: {"options": dict(_STOP), "budgets": b} for g, b in _LINF.items()},
    "pgd_l2": {g: {"options": {**_STOP, **({"alpha": 3.0} if g == "imagenet" else {})}, "budgets": b}
               for g, b in _L2.items()},
    "qpgd_l2": {g: {"options": {"steps": 20}, "budgets": b} for g, b in _L2.items()},
    "cw_l2": {g: {"options": {"steps": 20, "search_steps": 5, **o}, "quantize_mode": "attack"}
              for g, o in _CW.items()},
    "scw_l2": {g: {"options": {"steps": 20, "search_steps": 5, **_SCW[g]}, "quantize_mode": "attack"} for g in _SCW},
    "deepfool": {g: {"options": {}} for g in _L2},
    "ddn": {g: {"options": {"steps": 20}, "quantize_mode": "attack"} for g in _L2},
    "bp": {g: {"options": {"steps": 20}, "quantize_mode": "attack"} for g in _L2},
    # not in the thesis (Croce & Hein 2020, Andriushchenko et al. 2020): 20 iterations as the rows above,
    # APGD-T on the 3 likeliest other classes, Square with 1000 queries (AutoAttack: 100, 9, 5000)
    **{f"apgd_{n}": {g: {"options": {"steps": 20}, "budgets": b} for g, b in _B[n].items()} for n in _B},
    **{f"apgd_t_{n}": {g: {"options": {"steps": 20, "n_target_classes": 3}, "budgets": b} for g, b in _B[n].items()}
       for n in _B},
    **{f"square_{n}": {g: {"options": {"queries": 1000}, "budgets": b} for g, b in _B[n].items()} for n in _B},
    "apgd_l1": {g: {"options": {"steps": 20}, "budgets": b} for g, b in _L1.items()},
    "apgd_t_l1": {g: {"options": {"steps": 20, "n_target_classes": 3}, "budgets": b} for g, b in _L1.items()},
    # transfer attacks (not in the thesis): the NAA paper's T = 10, alpha = eps / T, mu = 1, N = 30
    **{name: {g: {"options": {"steps": 10}, "budgets": b} for g, b in _LINF.items()}
       for name in ("mifgsm", "naa", "fia", "nrdm", "fda", "ilpd")},
}


@dataclass
class AttackSpec:
    """One suite entry: a registered attack, its options, the eps sweep of distortion attacks."""

    attack: str
    label: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    budgets: list[float] | None = None
    quantize_mode: str | None = None  # default: "attack" when the attack class rounds every iterate
    #: fixed-budget attacks only: run each budget only on the images not yet broken within it (in every
    #: variant) by the suite's earlier attacks of the same norm (AutoAttack's cascade)
    cascade: bool = False

    def __post_init__(self) -> None:
        cls = ATTACKS[self.attack]  # unknown name: error listing the known ones
        self.label = self.label or self.attack
        if self.quantize_mode is None:
            self.quantize_mode = "attack" if getattr(cls, "rounds_iterates", False) else "post"
        self.options = dict(self.options or {})
        if self.quantize_mode not in QUANTIZE_MODES:
            raise ValueError(f"{self.label}: quantize_mode must be one of {', '.join(QUANTIZE_MODES)}, "
                             f"got {self.quantize_mode!r}")
        for reserved in ("quantize", "eps") if self.budgets is not None else ("quantize",):
            if reserved in self.options:
                raise ValueError(f"{self.label}: option {reserved!r} is set by the evaluation "
                                 f"({'quantize_mode' if reserved == 'quantize' else 'budgets'}); remove it")
        check_kwargs(cls, self.options, f"attack {self.attack!r}")
        if self.budgets is not None:
            if getattr(cls, "family", "") != "distortion" or "eps" not in valid_options(cls):
                raise ValueError(f"{self.label}: budgets (an eps sweep) need a distortion attack with an "
                                 f"'eps' option; {self.attack!r} is family {getattr(cls, 'family', '?')!r}")
            if not isinstance(self.budgets, (list, tuple)) or not self.budgets:
                raise ValueError(f"{self.label}: budgets must be a non-empty list of positive eps")
            for b in self.budgets:
                check_positive(f"{self.label}: budgets (eps)", b)
            self.budgets = sorted(float(b) for b in self.budgets)
        if not isinstance(self.cascade, bool):
            raise TypeError(f"{self.label}: cascade must be true or false, got {self.cascade!r}")
        if self.cascade and self.budgets is None:
            raise ValueError(f"{self.label}: cascade needs budgets (a fixed-budget attack skips the images "
                             "already broken within its budget)")
        for eps in self.runs():  # every option's type and range checked now, before any attack runs
            for quantize in (False, True):
                self.build(eps, quantize)

    @property
    def family(self) -> str:
        return getattr(ATTACKS[self.attack], "family", "distortion")

    @property
    def threat(self) -> str | None:
        """The threat model (norm) the attack bounds or minimizes; None for unrestricted attacks."""
        return None if self.family == "unrestricted" else ATTACKS[self.attack].norm

    def build(self, eps: float | None = None, quantize: bool = False) -> Attack:
        opts = dict(self.options, quantize=quantize)
        if eps is not None:
            opts["eps"] = eps
        return build_attack(self.attack, **opts)

    def runs(self) -> list[float | None]:
        """The budgets to run (one run at the defaults for success attacks)."""
        return list(self.budgets) if self.budgets is not None else [None]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group(dataset: str) -> str:
    return dataset_spec(dataset).group


def full_suite(dataset: str = "mnist_embedded") -> list[AttackSpec]:
    """Every registered attack (no aliases), with the thesis' settings for ``dataset`` when the
    table has them; otherwise its defaults (and a warning). Table options an attack does not take
    are dropped with a warning, so the table never blocks a newly registered attack. The attacks of
    a threat model the dataset has no standard budget for (L1 on ImageNet) are left out: a suite
    holding them would need ``--budget l1=EPS`` to run at all."""
    group = _group(dataset)
    specs = []
    for name in ATTACKS.canonical():
        if getattr(ATTACKS[name], "family", "") == "unrestricted":
            continue  # no thesis settings and fitted files needed: suites/unrestricted_mnist.yaml
        if ATTACKS[name].norm not in STANDARD_BUDGETS.get(group, {}):
            continue
        row = THESIS_SETTINGS.get(name, {}).get(group)
        if row is None:
            warnings.warn(f"attack {name!r} has no thesis settings for {dataset}: running it with its defaults")
            specs.append(AttackSpec(name))
            continue
        valid = valid_options(ATTACKS[name])
        dropped = [k for k in row.get("options", {}) if k not in valid]
        if dropped:
            warnings.warn(f"attack {name!r} takes no option {', '.join(dropped)} of the thesis table: dropped")
        options = {k: v for k, v in row.get("options", {}).items() if k in valid}
        specs.append(AttackSpec(name, options=options, budgets=row.get("budgets"),
                                quantize_mode=row.get("quantize_mode")))
    return specs


#: the ``reliable`` suite per dataset group, one ensemble per threat model. L2: fixed-budget attacks at
#: D_upp / 2, D_upp and the standard L2 budget (``threats.STANDARD_BUDGETS``), minimum-norm attacks with
#: enough iterations to converge. Linf: AutoAttack standard's composition at the standard Linf budget
#: (APGD-CE; APGD-T, DLR on 9 targets; FAB-T; Square, 5,000 queries) plus FMN-Linf, FAB-T and FMN being
#: minimum-norm attacks (the curve between budgets). Names of the attacks: APGD (``apgd_*`` CE,
#: ``apgd_t_*`` targeted DLR), ``fab_*`` targeted, ``square_*`` (score-based: the check gradient masking
#: cannot fool), ``fmn_*``, BP, DDN. The minimum-norm attacks land on the boundary, where rounding
#: afterwards loses most successes on robust models, so they run once per variant with their
#: quantization-aware mode (quantize_mode "attack": FAB/FMN check the rounded iterate, BP/DDN round
#: every iterate); APGD and Square stop inside their budget and are rounded afterwards into the ball
#: (``norms.quantize_within``). Cascade (AutoAttack's): APGD-T and Square run last, each budget only on
#: the images the earlier attacks of their norm left unbroken within it (in every variant). L1 (a dataset
#: with a standard L1 budget, or one given): AutoAttack's standard L1 version but Square (no L1 Square
#: yet): l1-APGD-CE with 5 restarts, FAB-T in L1 (minimum norm: the L1 curve), and l1-APGD-T on 5
#: targets (cascaded), the APGD runs with the 3-2-1 eps schedule. FAB-T matters there: on the Madry
#: LeNet5 at L1 10, AutoAttack's FAB-T breaks 5 of the 6 digits its APGD-CE leaves.
_RELIABLE_BUDGETS = {"mnist": [1.0, 2.0], "cifar10": [0.35, 0.7], "imagenet": [0.5, 1.0]}


def _reliable_entries(group: str, budgets: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The entries of the reliable suite for ``group`` with the standard budgets ``budgets`` (norm ->
    eps; default ``threats.STANDARD_BUDGETS[group]``)."""
    std = {**STANDARD_BUDGETS[group], **(budgets or {})}
    sweep = _RELIABLE_BUDGETS[group]
    l2_ce = sorted({*sweep, std["l2"]})
    l2_fixed = sorted({sweep[-1], std["l2"]})
    linf = [std["linf"]]
    minimum = {"quantize_mode": "attack"}
    l1 = [
        {"attack": "apgd_l1", "label": "apgd_ce_l1", "options": {"loss": "ce", "restarts": 5}, "budgets": [std["l1"]]},
        {"attack": "fab_l1", "label": "fab_t_l1", "options": {"targeted": True}, **minimum},
        {"attack": "apgd_t_l1", "label": "apgd_t_l1", "options": {"n_target_classes": 5}, "budgets": [std["l1"]],
         "cascade": True},
    ] if "l1" in std else []
    return [
        {"attack": "apgd_l2", "label": "apgd_ce", "options": {"loss": "ce"}, "budgets": l2_ce},
        {"attack": "fab_l2", "label": "fab_t", "options": {"targeted": True}, **minimum},
        {"attack": "fmn_l2", "label": "fmn", "options": {"steps": 300}, **minimum},
        {"attack": "bp", "label": "bp", "options": {"steps": 100, "variant": "switch"}, **minimum},
        {"attack": "ddn", "label": "ddn", "options": {"steps": 300}, **minimum},
        {"attack": "apgd_t_l2", "label": "apgd_t", "budgets": l2_fixed, "cascade": True},  # 9 targets x 100
        {"attack": "square_l2", "label": "square", "options": {"queries": 5000}, "budgets": l2_fixed,
         "cascade": True},
        {"attack": "apgd_linf", "label": "apgd_ce_linf", "options": {"loss": "ce"}, "budgets": linf},
        {"attack": "fab_linf", "label": "fab_t_linf", "options": {"targeted": True}, **minimum},
        {"attack": "fmn_linf", "label": "fmn_linf", "options": {"steps": 300}, **minimum},
        {"attack": "apgd_t_linf", "label": "apgd_t_linf", "budgets": linf, "cascade": True},
        {"attack": "square_linf", "label": "square_linf", "options": {"queries": 5000}, "budgets": linf,
         "cascade": True},
        *l1,
    ]


def reliable_suite(dataset: str = "mnist_embedded", budgets: dict[str, float] | None = None) -> list[AttackSpec]:
    """The ``reliable`` ensemble for ``dataset`` at the standard budgets (overridden by ``budgets``;
    see the module docstring). Fails with the list of missing attacks when some are not registered
    (nothing is silently left out of the worst case)."""
    entries = _reliable_entries(_group(dataset), budgets)
    missing = [e["attack"] for e in entries if e["attack"] not in ATTACKS]
    if missing:
        raise ValueError(f"the reliable suite needs attacks that are not registered: {', '.join(missing)}; "
                         "use --suite thesis or a suite file without them")
    return parse_suite(entries, where="reliable suite")


def quick_suite(dataset: str = "mnist_embedded", budgets: int = 3, max_steps: int = 10,
                max_search_steps: int = 3, max_queries: int | None = None) -> list[AttackSpec]:
    """``full`` made cheap (for demos): each eps sweep thinned to ``budgets`` values (first, middle,
    last), iterations capped at ``max_steps``, C&W-style line searches at ``max_search_steps`` and
    score-based queries (Square) at ``max_queries`` (default 20 per step of ``max_steps``)."""
    if budgets < 1:
        raise ValueError(f"budgets must be >= 1, got {budgets}")
    specs = full_suite(dataset)
    caps = {"steps": max_steps, "search_steps": max_search_steps, "queries": max_queries or 20 * max_steps}
    for s in specs:
        if s.budgets is not None and len(s.budgets) > budgets:
            last = len(s.budgets) - 1
            s.budgets = sorted({s.budgets[round(i * last / max(budgets - 1, 1))] for i in range(budgets)})
        params = inspect.signature(ATTACKS[s.attack].__init__).parameters
        for k, cap in caps.items():
            default = params[k].default if k in params else None
            value = s.options.get(k, default)
            if isinstance(value, int) and value > cap:
                s.options[k] = cap
    return specs


#: ``full`` is the former name of ``thesis`` (kept as an alias)
BUILTIN_SUITES = {"reliable": reliable_suite, "thesis": full_suite, "full": full_suite, "quick": quick_suite}


def parse_suite(entries: Any, where: str = "suite") -> list[AttackSpec]:
    """Validate a list of attack configs (dicts with keys ``SPEC_KEYS``) into specs."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: a suite is a non-empty YAML list of attack configs")
    specs = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "attack" not in e:
            raise ValueError(f"{where}: entry {i} must be a mapping with an 'attack' key, got {e!r}")
        bad = [k for k in e if k not in SPEC_KEYS]
        if bad:
            raise ValueError(f"{where}: entry {i} ({e['attack']}) has unknown key {', '.join(map(repr, bad))}; "
                             f"valid keys: {', '.join(SPEC_KEYS)}")
        try:
            specs.append(AttackSpec(**e))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: entry {i} ({e['attack']}): {err}") from None
    labels = [s.label for s in specs]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate labels {', '.join(dup)}; give each entry a distinct 'label'")
    return specs


def load_suite(suite: str | list | Path = "full", dataset: str = "mnist_embedded",
               budgets: dict[str, float] | None = None) -> list[AttackSpec]:
    """``"reliable"``, ``"thesis"`` (= ``"full"``), ``"quick"``, a name in ``advtrain/evaluation/suites/``
    (``demo``, ``smoke``, ...), a YAML file, or a list of configs/specs. ``budgets`` (norm -> eps, the
    standard budgets' overrides) set the reliable suite's fixed budgets; other suites keep theirs."""
    if isinstance(suite, list):
        if all(isinstance(s, AttackSpec) for s in suite):
            return list(suite)
        return parse_suite(suite)
    if str(suite) == "reliable":
        return reliable_suite(dataset, budgets)
    if str(suite) in BUILTIN_SUITES:
        return BUILTIN_SUITES[str(suite)](dataset)
    path = Path(suite)
    if not path.is_file() and (SUITES_DIR / f"{suite}.yaml").is_file():
        path = SUITES_DIR / f"{suite}.yaml"
    if not path.is_file():
        known = list(BUILTIN_SUITES) + sorted(p.name.removesuffix(".yaml") for p in SUITES_DIR.iterdir()
                                              if p.name.endswith(".yaml"))
        raise FileNotFoundError(f"suite {str(suite)!r} is neither a file nor a known suite ({', '.join(known)})")
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"suite file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_suite(entries, where=str(path))
