"""Layer access by module path (advtrain/nn/layers.py): record, replace, gradients, errors."""
import pytest
import torch
from torch import nn

from advtrain.nn.layers import LayerTap, features, find_layers, layer_hooks, layer_names
from advtrain.models import build_model


@pytest.fixture()
def c4():
    torch.manual_seed(0)
    return build_model("c4", num_classes=10).eval()


def test_recorded_feature_equals_a_direct_computation(c4):
    x = torch.rand(3, 1, 28, 28)
    feat = features(c4, x, "net.features.3")["net.features.3"]
    assert torch.allclose(feat, c4.net.features[:4](c4.normalize(x)))


def test_leaf_tap_gives_the_gradient_wrt_the_feature_only(c4):
    """d logit / d feature through the layers above the tap equals the gradient of the head alone."""
    x = torch.rand(2, 1, 28, 28)
    with LayerTap(c4, "net.features.5", leaf=True) as tap:
        logits = c4(x)
    feat = tap["net.features.5"]
    assert feat.is_leaf and feat.requires_grad
    (g,) = torch.autograd.grad(logits[:, 3].sum(), feat)
    f2 = feat.detach().requires_grad_(True)
    (g2,) = torch.autograd.grad(c4.net.classifier(f2.mean(dim=(2, 3)))[:, 3].sum(), f2)
    assert torch.allclose(g, g2)


def test_replacement_changes_the_forward_and_hooks_are_removed(c4):
    x = torch.rand(2, 1, 28, 28)
    clean = c4(x)
    with layer_hooks(c4, {"net.features.5": lambda out: torch.zeros_like(out)}):
        zeroed = c4(x)
    assert torch.allclose(zeroed, c4.net.classifier.bias.expand(2, -1))
    assert torch.equal(c4(x), clean)  # hook gone after the block


def test_inplace_activation_after_the_tap_does_not_corrupt_the_recorded_feature():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(-torch.eye(4))
        net[0].bias.zero_()
    with LayerTap(net, "0") as tap:
        net(torch.ones(1, 4))
    assert torch.equal(tap["0"], -torch.ones(1, 4))  # the in-place ReLU zeroed a clone, not the record


def test_unknown_layer_lists_the_valid_ones(c4):
    with pytest.raises(ValueError, match=r"unknown layer 'net\.features\.9'.*valid layers: .*net\.features\.3"):
        LayerTap(c4, "net.features.9")
    with pytest.raises(ValueError, match="unknown layer"):
        find_layers(c4, [""])
    with pytest.raises(ValueError, match="at least one layer"):
        LayerTap(c4, [])
    assert "net.features.3" in layer_names(c4)
