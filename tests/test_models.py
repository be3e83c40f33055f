import pytest
import torch

from advtrain.models import Normalize, build_model, load_state_dict_safely


@pytest.mark.parametrize("name,shape", [("c4", (2, 1, 28, 28)), ("lenet", (2, 1, 28, 28)), ("cifar_cnn", (2, 3, 32, 32)),
                                        ("torchvision:resnet18", (2, 3, 64, 64)),
                                        ("timm:resnet18", (2, 3, 64, 64))])
def test_forward_shapes(name, shape):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (2, 7)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'nonet'; known: c4, cifar_cnn, lenet, mlp, timm:<name>, "
                                         "torchvision:<name>"):
        build_model("nonet")
    with pytest.raises(ValueError, match="unknown torchvision model"):
        build_model("torchvision:notanet")
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timm:notanet")


def test_builtin_pretrained_is_a_clear_error():
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("c4", pretrained=True)


def test_normalize_is_first_layer_and_exact():
    model = build_model("cifar_cnn")
    x = torch.rand(2, 3, 32, 32)
    n = model.normalize
    assert isinstance(n, Normalize)
    expected = (x - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    torch.testing.assert_close(n(x), expected)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.0], [0.0])


class _Evil:
    """Any non-tensor class: weights_only=True must refuse to unpickle it."""


def test_weights_roundtrip_is_safe(tmp_path):
    a = build_model("c4")
    path = tmp_path / "w.pt"
    torch.save(a.net.state_dict(), path)
    b = build_model("c4", weights=str(path))
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(a(x), b(x))
    # a pickled arbitrary object is refused by weights_only=True
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is not a readable weights file .*Unsupported global"):
        load_state_dict_safely(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        load_state_dict_safely(tmp_path / "missing.pt")


def test_mlp_builtin_takes_mnist_pixels():
    model = build_model("mlp", num_classes=10)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
