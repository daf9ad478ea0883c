"""Data readers on small files written here in the official formats; balanced subsets; messages."""
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from conftest import idx_bytes, write_fashion

from experiments.harness.config import ConfigError
from experiments.harness.data import (
    DataMissingError,
    balanced_subset,
    data_config,
    load,
    read_cifar_archive,
    read_idx,
)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reader_and_preprocessing(tmp_path, gz):
    files = write_fashion(tmp_path, gz=gz)
    np.testing.assert_array_equal(read_idx(tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else ""))),
                                  files["train-labels-idx1-ubyte"])
    d = load(data_config("fashion_mnist", root=str(tmp_path), n_train=30, n_test=20))
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert torch.bincount(d.y_train, minlength=10).tolist() == [3] * 10  # class-balanced
    assert abs(float(d.x_train.mean())) < 1e-10 and abs(float(d.x_train.std()) - 1) < 1e-2  # train statistics


def test_truncated_idx_file_is_an_error(tmp_path):
    (tmp_path / "x").write_bytes(idx_bytes(np.zeros((5, 2, 2)))[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x")


def test_truncated_gz_file_is_one_line_naming_the_file(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataMissingError, match=r"t10k-images-idx3-ubyte.gz is truncated or corrupt .*reinstall") as err:
        load(data_config("fashion_mnist", root=str(tmp_path), n_train=10, n_test=10))
    assert "\n" not in str(err.value)


def test_standardised_inputs_do_not_depend_on_the_thread_count(tmp_path):
    """Bit-identical whatever torch's thread count (a parallel reduction would change the last bits),
    with an identity that says which images, how preprocessed, from which raw bytes."""
    write_fashion(tmp_path, n_train=200, n_test=40)
    cfg = data_config("fashion_mnist", root=str(tmp_path), n_train=150, n_test=30)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = load(cfg)
        torch.set_num_threads(2)
        two = load(cfg)
    finally:
        torch.set_num_threads(before)
    assert one.x_train.numpy().tobytes() == two.x_train.numpy().tobytes()
    assert one.x_test.numpy().tobytes() == two.x_test.numpy().tobytes()
    assert one.identity("train") == two.identity("train") and one.identity("test") != one.identity("train")
    other = load(data_config("fashion_mnist", root=str(tmp_path), n_train=150, n_test=30, seed=1))
    assert other.identity("train") != one.identity("train")
    raw = load(data_config("fashion_mnist", root=str(tmp_path), n_train=150, n_test=30, standardize=False))
    assert raw.identity("train") != one.identity("train")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        load(data_config("fashion_mnist", root=str(tmp_path)))


def _write_cifar(path, n_per_batch=20):
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                     b"labels": list(np.arange(n_per_batch) % 10)}
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_cifar10_reader_on_a_small_archive(tmp_path):
    _write_cifar(tmp_path / "cifar-10-python.tar.gz")
    x_tr, y_tr, x_te, y_te = read_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    assert x_tr.shape == (100, 3, 32, 32) and x_te.shape == (20, 3, 32, 32) and x_tr.dtype == np.uint8
    d = load(data_config("cifar10", root=str(tmp_path), n_train=50, n_test=10))
    assert d.x_train.shape == (50, 3, 32, 32)
    assert torch.allclose(d.x_train.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DataMissingError, match="cifar-10-python.tar.gz"):
        load(data_config("cifar10", root=str(tmp_path)))


def test_digits_default_is_real_and_balanced():
    d = load(data_config("digits", n_train=100, n_test=50, seed=3))
    assert d.x_train.shape == (100, 1, 8, 8) and torch.bincount(d.y_train).tolist() == [10] * 10
    again = load(data_config("digits", n_train=100, n_test=50, seed=3))
    assert torch.equal(d.x_train, again.x_train)  # seeded
    # train and test images are disjoint
    tr = {tuple(v.tolist()) for v in d.x_train.flatten(1)}
    assert not any(tuple(v.tolist()) in tr for v in d.x_test.flatten(1))


def test_too_many_images_is_a_config_error():
    with pytest.raises(ConfigError, match="data.n_train"):
        load(data_config("digits", n_train=1700, n_test=10))


def test_sphere_points_have_unit_norm():
    d = load(data_config("sphere", n_train=20, n_test=10, num_classes=2, shape=[2, 3, 3]))
    assert torch.allclose(d.x_train.flatten(1).norm(dim=1), torch.ones(20, dtype=torch.float64))


def test_balanced_subset_rejects_impossible_requests():
    with pytest.raises(ConfigError, match="class 1 has 1"):
        balanced_subset(torch.zeros(5, 1), np.array([0, 0, 0, 0, 1]), 4, 2, 0)


def test_a_training_draw_redraws_the_training_images_and_keeps_the_test_images():
    cfg = data_config("digits", n_train=100, n_val=50, n_test=50, seed=3)
    base, draw0, draw1, draw1_again = load(cfg), load(cfg, train_draw=0), load(cfg, train_draw=1), load(cfg, train_draw=1)
    assert torch.equal(base.x_train, draw0.x_train) and base.identity("train") == draw0.identity("train")
    assert torch.equal(draw1.x_train, draw1_again.x_train)  # seeded
    assert torch.bincount(draw1.y_train).tolist() == [10] * 10  # class-balanced
    assert base.identity("train")["indices_sha256"] != draw1.identity("train")["indices_sha256"]
    assert draw1.identity("train")["draw"] == 1 and base.identity("test") != draw1.identity("test")  # standardised apart
    assert base.identity("test")["indices_sha256"] == draw1.identity("test")["indices_sha256"]
    assert torch.equal(base.y_test, draw1.y_test)
    tr = {tuple(v.tolist()) for v in draw1.x_train.flatten(1)}  # train and validation stay disjoint
    assert not any(tuple(v.tolist()) in tr for v in draw1.x_val.flatten(1))
    with pytest.raises(ValueError, match="train_draw"):
        load(cfg, train_draw=-1)
