"""One name per concept (issue 15): iteration counts are ``steps`` (an inner solver's are named for
it: ``cg_steps``, ``kmeans_steps``, ``line_search_steps``), ``eps`` is only an Lp budget, defenses
declare ``needs_bpda``; an old option name fails with one line naming the new one."""
from __future__ import annotations

import pytest
from torch import nn

from advtrain.attacks import ATTACKS, build_attack
from advtrain.defenses.defended import Defended
from advtrain.defenses.patch_replacement import LayerConfig
from advtrain.evaluation.suite import load_suite
from advtrain.registry import RENAMED_OPTIONS, valid_options


@pytest.mark.parametrize("build, old, new", [
    (lambda: build_attack("scw_l2", cg_iters=5), "cg_iters", "cg_steps"),
    (lambda: build_attack("qpgd_l2", cg_iters=5), "cg_iters", "cg_steps"),
    (lambda: build_attack("ddn", niter=5), "niter", "steps"),
    (lambda: load_suite([{"attack": "bp", "options": {"iters": 5}}]), "iters", "steps"),
    (lambda: LayerConfig.of({"layer": "image", "strategy": "linf", "eps": 0.1}), "eps", "strength"),
])
def test_an_old_option_name_says_the_new_one(build, old, new):
    with pytest.raises(ValueError, match=f"option '{old}' was renamed to '{new}'"):
        build()


def test_no_attack_takes_an_old_name_and_eps_is_always_a_budget():
    for name in ATTACKS.canonical():
        options = set(valid_options(ATTACKS[name]))
        assert not options & (set(RENAMED_OPTIONS) - {"eps"}), name
        if "eps" in options:  # an Lp budget: only attacks that keep within one
            assert getattr(ATTACKS[name], "family", "") == "distortion", name


def test_a_defense_declaring_the_old_attribute_is_refused():
    class Old(nn.Module):
        differentiable = True

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="'differentiable' was renamed to 'needs_bpda'"):
        Defended(nn.Identity(), Old()).attack_view("bpda")


def test_every_attack_carries_the_name_it_is_registered_by():
    """One source for an attack's name: the registry sets it (results, reports and counts use it)."""
    from advtrain.training.fast_at import INNER_ATTACKS
    for registry in (ATTACKS, INNER_ATTACKS):
        for name in registry.canonical():
            assert registry[name].name == name
    assert ATTACKS["bim"] is ATTACKS["ifgsm"] and ATTACKS["bim"].name == "ifgsm"  # an alias keeps the first name


def test_a_class_that_names_itself_is_refused_at_registration():
    from advtrain.attacks.base import Attack
    from advtrain.registry import Registry
    with pytest.raises(TypeError, match="Named sets name itself; the attack registry sets it to 'x'"):
        @Registry("attack", sets_name=True).register("x")
        class Named(Attack):
            name = "y"
