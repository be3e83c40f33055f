"""One weights hash: ``io.fingerprint.weights_sha256`` (its 16-digit ``weights_tag`` in files and file
names); hashes that D2B statistics and FSA encoders stored before 2026-12-06 are still accepted."""
from __future__ import annotations

import pytest
import torch

from advtrain.featspace.provision import provision
from advtrain.io.artifacts import check_bound_to
from advtrain.io.fingerprint import legacy_weights_tags, same_weights, weights_sha256, weights_tag
from advtrain.models import build_model


@pytest.fixture
def pair():
    torch.manual_seed(0)
    a, b = build_model("c4"), build_model("c4")
    return a, b


def test_the_tag_is_the_content_hash_shortened(pair):
    a, _ = pair
    assert weights_tag(a) == weights_sha256(a)[:16] == weights_sha256(a.state_dict())[:16]


def test_stored_hashes_match_their_model_only(pair):
    a, b = pair
    assert same_weights(weights_tag(a), a) and not same_weights(weights_tag(a), b)
    (legacy,) = legacy_weights_tags(a)
    assert legacy != weights_tag(a)  # another format: accepted on load, never written
    assert same_weights(legacy, a) and not same_weights(legacy, b)
    assert not same_weights(None, a) and not same_weights(123, a)


def test_a_file_bound_by_the_earlier_hash_still_loads(pair, tmp_path):
    a, b = pair
    (legacy,) = legacy_weights_tags(a)
    check_bound_to({"model_hash": legacy}, a, "activation statistics", tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match=f"fitted on another model.*this model {weights_tag(b)}"):
        check_bound_to({"model_hash": legacy}, b, "activation statistics", tmp_path / "s.safetensors")


def test_provision_finds_statistics_fitted_under_the_earlier_name(pair, tmp_path):
    a, _ = pair
    (legacy,) = legacy_weights_tags(a)
    old = tmp_path / f"d2b_stats_{legacy}.safetensors"
    old.write_bytes(b"")  # only its name matters here: provision must not fit a second file
    assert provision("d2b", {}, a, "mnist_embedded", tmp_path)["stats"] == str(old)
    old.unlink()
    (tmp_path / f"d2b_stats_{weights_tag(a)}.safetensors").write_bytes(b"")
    assert provision("d2b", {}, a, "mnist_embedded", tmp_path)["stats"] == str(
        tmp_path / f"d2b_stats_{weights_tag(a)}.safetensors")
