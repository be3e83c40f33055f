"""results.json on disk: written after every attack, read back by a rerun into the same folder, which
skips the finished attacks when it evaluates the same model with the same settings (never mixing or
overwriting the results of another evaluation)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..io.files import atomic_write
from .suite import AttackSpec

#: the layout of results.json: 2 adds the threat models (per-attack "norm", per-sample distortions in
#: every norm, ``threat_models``); a file of another version is refused, never mixed
RESULTS_VERSION = 2

#: context entries that say where, not what: a rerun may change them and keep the finished results
PROVENANCE = ("checkpoint",)
_WHAT = {"model_sha256": "model weights", "n_prime": "number of test images n"}


def _finite(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))) else v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return _finite(obj) if isinstance(obj, float) else obj


def canon(obj: Any) -> Any:
    """As it reads back from JSON (NaN/Inf as None, tuples as lists): for comparisons with a previous
    results.json."""
    return json.loads(json.dumps(_jsonable(obj)))


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as JSON at ``path``, atomically (a crash mid-write keeps the previous file)."""
    text = json.dumps(_jsonable(obj), indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def previous_results(path: Path, ctx: dict, specs: list[AttackSpec]) -> dict:
    """Finished attacks of an earlier run into the same folder, when it evaluated the same model with
    the same settings (``ctx``) and attack options; otherwise ``{"error": ...}``: finished results are
    never mixed nor overwritten."""
    if not path.is_file():
        return {"attacks": {}}
    keep = "they are kept; choose another output folder (or move them away)"
    try:
        old = json.loads(path.read_text())
        old_ctx, old_attacks = old["context"], old["attacks"]
        assert isinstance(old_ctx, dict) and isinstance(old_attacks, dict)
    except (ValueError, KeyError, TypeError, AssertionError, OSError):
        return {"error": f"{path} is not a readable results.json of run_suite: {keep}"}
    if old.get("version") != RESULTS_VERSION:
        return {"error": f"{path} was written by another version of advtrain (results format "
                         f"{old.get('version', 1)}, this one writes {RESULTS_VERSION}): {keep}"}
    new = canon(ctx)
    differ = [_WHAT.get(k, k) for k in new if k not in PROVENANCE and old_ctx.get(k) != new[k]]
    if differ:
        return {"error": f"{path.parent} holds results of another evaluation (different {', '.join(differ)}): {keep}"}
    done = {k: e for k, e in old_attacks.items() if isinstance(e, dict) and e.get("status") == "done"}
    changed = [s.label for s in specs if s.label in done and done[s.label].get("key") != canon(s.as_dict())]
    if changed:
        return {"error": f"{path.parent} holds finished results of {', '.join(changed)} with other attack options: "
                         f"give the changed entries new labels or {keep.split('; ')[1]}"}
    return {"attacks": done}
