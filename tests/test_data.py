import pytest
import torch
from PIL import Image

from advtrain.data import DATASETS, MissingDatasetError, NamedDataModule, build_datamodule


def test_embedded_mnist_shapes_range_and_split(mnist_dm):
    assert [len(mnist_dm.train_set), len(mnist_dm.val_set), len(mnist_dm.test_set)] == [4000, 500, 500]
    x, y = next(iter(mnist_dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert y.dtype == torch.long and int(y.min()) >= 0 and int(y.max()) <= 9
    # all ten classes in the test split
    ys = torch.tensor([mnist_dm.test_set[i][1] for i in range(len(mnist_dm.test_set))])
    assert len(ys.unique()) == 10


def test_embedded_split_is_deterministic_and_disjoint():
    a = build_datamodule("mnist_embedded", seed=0)
    b = build_datamodule("mnist_embedded", seed=0)
    c = build_datamodule("mnist_embedded", seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert a.test_set.indices == b.test_set.indices
    assert a.test_set.indices != c.test_set.indices
    assert not set(a.train_set.indices) & set(a.test_set.indices)
    assert not set(a.val_set.indices) & set(a.test_set.indices)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="known: .*cifar10.*mnist_embedded"):
        build_datamodule("svhn")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_torchvision_dataset_says_where(tmp_path, name):
    dm = build_datamodule(name, root=str(tmp_path / "nowhere"))
    with pytest.raises(MissingDatasetError, match="nowhere"):
        dm.setup()


def test_missing_imagefolder_says_where(tmp_path):
    dm = build_datamodule("imagefolder", root=str(tmp_path / "imnet"))
    with pytest.raises(MissingDatasetError, match="imnet/train"):
        dm.setup()


def test_imagefolder_on_generated_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "fox"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                arr = (torch.rand(40, 50, 3, generator=g) * 255).byte().numpy()
                Image.fromarray(arr).save(d / f"{i}.png")
    dm = build_datamodule("imagefolder", root=str(tmp_path), image_size=32, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.num_classes == 3
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_named_datamodule_rejects_options_the_dataset_does_not_take():
    with pytest.raises(ValueError, match="takes no option root"):
        NamedDataModule(dataset="mnist_embedded", root="x")
    assert set(DATASETS.keys()) == {"mnist_embedded", "mnist", "cifar10", "imagefolder"}
