import tarfile

import pytest
import torch
from PIL import Image

from wrnlib import data as wdata
from wrnlib.data import augment_batch, load_cifar, normalize, prepare_data, stratified_split
from wrnlib.errors import DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar10(data_root):
    return load_cifar("cifar10", data_root, download=False)


def test_cifar10_archive_counts_and_order(cifar10):
    assert cifar10.train_x.shape == (50_000, 3, 32, 32)
    assert cifar10.test_x.shape == (10_000, 3, 32, 32)
    assert cifar10.train_x.dtype == torch.uint8
    assert cifar10.classes == CIFAR10_CLASSES
    assert torch.bincount(cifar10.train_y).tolist() == [5000] * 10
    assert torch.bincount(cifar10.test_y).tolist() == [1000] * 10


def test_cifar100_archive_counts_and_order(data_root):
    arrays = load_cifar("cifar100", data_root, download=False)
    assert arrays.train_x.shape == (50_000, 3, 32, 32)
    assert arrays.test_x.shape == (10_000, 3, 32, 32)
    assert len(arrays.classes) == 100
    assert arrays.classes[:3] == ["apple", "aquarium_fish", "baby"]
    assert arrays.classes[-1] == "worm"
    assert torch.bincount(arrays.train_y).tolist() == [500] * 100


def test_second_load_reads_cache(data_root, cifar10, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("the archive was decoded again")

    monkeypatch.setattr(wdata, "_read_archive", no_decoding)
    again = load_cifar("cifar10", data_root, download=False)
    assert torch.equal(again.train_x[:100], cifar10.train_x[:100])
    assert torch.equal(again.test_y, cifar10.test_y)


def _write_tree(root, classes, images_per_class=2, size=32, source=None):
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            folder = root / "cifar10" / split / name
            folder.mkdir(parents=True)
            for i in range(images_per_class):
                if source is not None:
                    pixels = source[label * images_per_class + i].permute(1, 2, 0).numpy()
                    Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                else:
                    Image.new("RGB", (size, size), (label, i, 0)).save(folder / f"{i:04d}.png")


def test_imagefolder_tree_loads_same_pixels(tmp_path, cifar10):
    source = cifar10.train_x[:20]
    _write_tree(tmp_path, CIFAR10_CLASSES, source=source)
    arrays = load_cifar("cifar10", tmp_path, download=False, cache=tmp_path / "cache")
    assert arrays.source.startswith("imagefolder:")
    assert arrays.classes == CIFAR10_CLASSES
    assert torch.equal(arrays.train_x, source)
    assert arrays.train_y.tolist() == [c for c in range(10) for _ in range(2)]


def test_missing_data_root_is_reported(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar("cifar10", tmp_path / "nowhere", download=False)


def test_absent_dataset_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=False)
    message = str(info.value)
    assert "cifar10.tar.gz" in message
    assert "cifar-10-batches-py" in message


def test_archive_with_wrong_class_count(tmp_path):
    _write_tree(tmp_path / "tree", CIFAR10_CLASSES[:3])
    archive = tmp_path / "root" / "cifar10.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "cifar10", arcname="cifar10")
    with pytest.raises(DataError, match="3 class folders .* cifar10 has 10 classes"):
        load_cifar("cifar10", archive.parent, download=False, cache=tmp_path / "cache")


def test_corrupt_image_is_named(tmp_path):
    _write_tree(tmp_path, CIFAR10_CLASSES, images_per_class=1)
    bad = tmp_path / "cifar10" / "train" / "cat" / "0000.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="cannot decode image .*cat/0000.png"):
        load_cifar("cifar10", tmp_path, download=False, cache=tmp_path / "cache")


def test_wrong_image_size_is_named(tmp_path):
    _write_tree(tmp_path, CIFAR10_CLASSES, images_per_class=1)
    odd = tmp_path / "cifar10" / "test" / "dog" / "0000.png"
    Image.new("RGB", (16, 16)).save(odd)
    with pytest.raises(DataError, match=r"dog/0000.png is 16x16 pixels"):
        load_cifar("cifar10", tmp_path, download=False, cache=tmp_path / "cache")


def test_unknown_dataset_rejected(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        load_cifar("mnist", tmp_path)


def test_stratified_split_balances_classes():
    labels = torch.arange(10).repeat_interleave(50)
    rest, chosen = stratified_split(labels, 30, seed=1)
    assert torch.bincount(labels[chosen], minlength=10).tolist() == [3] * 10
    assert rest.numel() == 470
    assert set(rest.tolist()).isdisjoint(chosen.tolist())
    again_rest, again_chosen = stratified_split(labels, 30, seed=1)
    assert torch.equal(chosen, again_chosen)
    _, other = stratified_split(labels, 30, seed=2)
    assert not torch.equal(chosen, other)


def test_prepare_data_splits(data_root):
    splits = prepare_data("cifar10", data_root, val_size=1000, train_subset=2000, test_subset=500, seed=0,
                          download=False)
    assert splits.train_y.numel() == 2000
    assert splits.val_y.numel() == 1000
    assert splits.test_y.numel() == 500
    assert torch.bincount(splits.val_y).tolist() == [100] * 10
    assert not splits.val_is_test


def test_val_size_zero_uses_test_set(data_root):
    splits = prepare_data("cifar10", data_root, val_size=0, train_subset=100, test_subset=200, download=False)
    assert splits.val_is_test
    assert torch.equal(splits.val_x, splits.test_x)


def test_augment_is_crop_of_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    assert out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        matches = [
            (dy, dx, flip)
            for dy in range(9) for dx in range(9) for flip in (False, True)
            if torch.equal(out[i], (lambda w: w.flip(2) if flip else w)(padded[i, :, dy:dy + 32, dx:dx + 32]))
        ]
        assert matches, f"image {i} is not a (flipped) 32x32 window of the padded image"


def test_augment_returns_channels_last():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    channels_last_input = augment_batch(x.contiguous(memory_format=torch.channels_last),
                                        torch.Generator().manual_seed(0))
    assert torch.equal(out, channels_last_input)


def test_normalize_standardises_and_keeps_layout():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, (x.float() / 255.0 - mean) / std, rtol=0, atol=1e-6)


def test_splits_move_images_channels_last(data_root):
    splits = prepare_data("cifar10", data_root, val_size=20, train_subset=40, test_subset=20, seed=0,
                          download=False)
    moved = splits.to("cpu", memory_format=torch.channels_last)
    for name in ("train_x", "val_x", "test_x"):
        assert getattr(moved, name).is_contiguous(memory_format=torch.channels_last), name
        assert torch.equal(getattr(moved, name), getattr(splits, name)), name
    assert torch.equal(moved.train_y, splits.train_y)
    assert moved.mean.shape == (1, 3, 1, 1)


def test_augment_is_seeded():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_failed_download_lists_layouts(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as err:
        load_cifar("cifar10", tmp_path, download=True, cache=tmp_path / "cache")
    message = str(err.value)
    assert "download into it failed: network is unreachable" in message
    assert f"{tmp_path / 'cifar10.tar.gz'} (archive of that folder)" in message
    assert "Set --data-root or WRNLIB_DATA_ROOT" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
