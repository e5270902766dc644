import warnings

import numpy as np
import pytest
import torch

from gradguard.data import DATASETS, load_dataset, load_npz, partition_dirichlet, partition_iid
from gradguard.errors import ConfigError, DatasetFormatError, DatasetNotFoundError


def test_mnist_sample_is_balanced_pixel_space(mnist_sample):
    ds = mnist_sample
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.x_train) == 4000 and len(ds.x_test) == 1000
    assert ds.x_train.dtype == torch.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert torch.bincount(ds.y_test).tolist() == [100] * 10
    assert load_dataset("mnist-sample").x_test.equal(ds.x_test), "the split must be deterministic"


def _write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), y_train=np.arange(20) % 4,
                  x_test=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), y_test=np.arange(5) % 4)
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_npz_interchange_roundtrip(tmp_path):
    arrays = _write_npz(tmp_path / "d.npz")
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.image_shape == (3, 8, 8) and ds.num_classes == 4
    assert torch.equal((ds.x_train * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(arrays["x_train"]))


@pytest.mark.parametrize("overrides, message", [
    (dict(y_test=None), "missing arrays"),
    (dict(x_train=np.zeros((20, 8, 8, 3), np.float32)), "uint8"),
    (dict(x_train=np.zeros((20, 8, 8, 5), np.uint8)), "shape"),
    (dict(y_train=np.arange(19)), "y_train"),
    (dict(y_test=np.array([0, 1, -1, 2, 3])), ">= 0"),
    (dict(x_test=np.zeros((5, 9, 9, 3), np.uint8)), "x_test images"),
])
def test_malformed_npz_gives_clear_error(tmp_path, overrides, message):
    _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DatasetFormatError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(DatasetFormatError, match="not a readable"):
        load_npz(tmp_path / "x.npz")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "truncated or damaged"),  # a copy cut short
    (lambda raw: raw[:200] + b"\xff" * 64 + raw[264:], "truncated or damaged"),  # bytes of an array overwritten
])
def test_damaged_npz_names_the_file_and_what_to_do(tmp_path, damage, message):
    _write_npz(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(damage((tmp_path / "good.npz").read_bytes()))
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_npz(bad)
    assert str(bad) in str(info.value) and "numpy.savez" in str(info.value)


def test_an_npy_array_given_for_an_npz_is_named(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(DatasetFormatError, match="single .npy array, not an .npz"):
        load_npz(tmp_path / "x.npy")


@pytest.mark.parametrize("split", ["x_train", "x_test"])
def test_an_empty_split_is_refused_before_any_warning(tmp_path, split):
    labels = "y_train" if split == "x_train" else "y_test"
    _write_npz(tmp_path / "empty.npz", **{split: np.zeros((0, 8, 8, 3), np.uint8), labels: np.zeros(0, np.int64)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's std() warning on zero images would fail here
        with pytest.raises(DatasetFormatError, match=f"{split} holds no images"):
            load_npz(tmp_path / "empty.npz")


def test_a_test_label_outside_the_training_labels_is_refused(tmp_path):
    """Without a declared class count, the classes are y_train's range; a test label beyond it
    used to widen the model silently (13 outputs for 4 trained classes)."""
    _write_npz(tmp_path / "d.npz", y_test=np.array([0, 1, 2, 3, 12]))
    with pytest.raises(DatasetFormatError, match="y_test holds label 12, but the training labels are 0..3"):
        load_npz(tmp_path / "d.npz")


def test_gradguard_data_is_the_root_unless_data_root_is_given(tmp_path, monkeypatch, capsys):
    from gradguard.cli import run
    from gradguard.data import resolve_root

    _write_npz(tmp_path / "mnist.npz", x_train=np.zeros((20, 28, 28), np.uint8), x_test=np.zeros((5, 28, 28), np.uint8))
    monkeypatch.setenv("GRADGUARD_DATA", str(tmp_path))
    assert resolve_root(None) == tmp_path and resolve_root(tmp_path / "other") == tmp_path / "other"
    assert len(load_dataset("mnist").x_train) == 20
    assert run(["datasets"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "mnist.npz") in out and "$GRADGUARD_DATA" in out
    assert run(["datasets", "--data-root", str(tmp_path / "other")]) == 0
    assert "from --data-root" in capsys.readouterr().out
    monkeypatch.delenv("GRADGUARD_DATA")
    assert run(["datasets"]) == 0
    assert "GRADGUARD_DATA unset" in capsys.readouterr().out


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "--download" in message


def test_fashion_mnist_hint_names_debian_package(tmp_path):
    spec = DATASETS["fashion-mnist"]
    if spec.find(tmp_path) is not None:
        pytest.skip("Debian's fashion-mnist files are installed here, so nothing is missing")
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown name 'imagenet'"):
        load_dataset("imagenet")


def test_torchvision_layout_is_read(tmp_path, mnist_sample):
    """Files in torchvision's MNIST layout load through torchvision, pixel for pixel."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = (mnist_sample.x_train[:30, 0] * 255).round().byte().numpy()
    labels = mnist_sample.y_train[:30].numpy().astype(np.uint8)

    def idx(path, array, code):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + array.tobytes())

    for prefix in ("train", "t10k"):
        idx(raw / f"{prefix}-images-idx3-ubyte", images, 3)
        idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 1)
    ds = load_dataset("mnist", tmp_path)
    assert ds.mean == (0.1307,)
    assert torch.equal(ds.x_train, mnist_sample.x_train[:30]) and torch.equal(ds.y_test, mnist_sample.y_train[:30])


def test_iid_partition_covers_every_sample_once(generator):
    parts = partition_iid(103, 10, generator)
    assert sorted(torch.cat(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}


def test_partitions_are_deterministic_per_seed():
    labels = torch.arange(500) % 10
    a = partition_dirichlet(labels, 5, 0.5, torch.Generator().manual_seed(3))
    b = partition_dirichlet(labels, 5, 0.5, torch.Generator().manual_seed(3))
    c = partition_dirichlet(labels, 5, 0.5, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _label_skew(parts, labels) -> float:
    """Mean total-variation distance between each client's label histogram and the global one."""
    overall = torch.bincount(labels, minlength=10).double()
    overall /= overall.sum()
    tv = [0.5 * (torch.bincount(labels[p], minlength=10).double() / len(p) - overall).abs().sum() for p in parts]
    return float(torch.stack(tv).mean())


def test_dirichlet_covers_and_skew_grows_as_alpha_shrinks():
    labels = torch.arange(4000) % 10
    skews = []
    for alpha in (100.0, 1.0, 0.1):
        parts = partition_dirichlet(labels, 20, alpha, torch.Generator().manual_seed(0))
        assert sorted(torch.cat(parts).tolist()) == list(range(4000))
        assert min(len(p) for p in parts) >= 1
        skews.append(_label_skew(parts, labels))
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.15 and skews[2] > 0.5


@pytest.mark.parametrize("call, message", [
    (lambda g: partition_iid(10, 0, g), "clients: must be >= 1"),
    (lambda g: partition_iid(10, 11, g), "cannot share"),
    (lambda g: partition_dirichlet(torch.zeros(10, dtype=torch.long), 2, 0.0, g), "alpha"),
])
def test_partition_bad_input(generator, call, message):
    with pytest.raises(ConfigError, match=message):
        call(generator)


@pytest.mark.data
@pytest.mark.parametrize("name, shape, train, test", [
    ("mnist", (1, 28, 28), 60000, 10000),
    ("fashion-mnist", (1, 28, 28), 60000, 10000),
])
def test_full_grey_datasets(data_root, name, shape, train, test):
    ds = load_dataset(name, data_root)
    assert ds.image_shape == shape and (len(ds.x_train), len(ds.x_test)) == (train, test)
    assert torch.bincount(ds.y_train).min() >= 5000
    if name == "mnist":
        assert abs(ds.x_train.mean().item() - 0.1307) < 1e-3 and abs(ds.x_train.std().item() - 0.3081) < 1e-3


@pytest.mark.data
def test_full_cifar10_with_exact_overlay(data_root):
    ds = load_dataset("cifar10", data_root)
    assert ds.image_shape == (3, 32, 32) and (len(ds.x_train), len(ds.x_test)) == (50000, 10000)
    with np.load(data_root / "cifar10_exact.npz") as exact:
        want = torch.from_numpy(exact["x_train"][:50]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(ds.x_train[:50], want), "train images 0..3999 must carry exact pixels"
        assert torch.equal(ds.y_train[exact["train_index"]], torch.from_numpy(exact["y_train"]))
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
