"""CIFAR-10 and CIFAR-100 as uint8 tensors, with splits and batch augmentation.

A data set is looked up in one data root, in this order:

1. `<root>/<name>/` as an ImageFolder tree (`train/<class>/*`, `test/<class>/*`);
2. `<root>/<name>.tar.gz`, an archive holding that tree;
3. torchvision's own files under `<root>` (downloaded there when allowed).

Whatever the source, images are decoded once into uint8 tensors of shape
(N, 3, 32, 32) and cached in a writable directory (`WRNLIB_CACHE`, default
`~/.cache/wrnlib`), so that later loads only read one file. Class ids follow the
sorted class-folder names, which for both data sets equals the official order.

Augmentation (4-pixel zero-pad random crop, horizontal flip) and per-channel
normalisation run on whole batches of tensors, on the training device.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "CifarArrays",
    "DataSplits",
    "augment_batch",
    "cache_dir",
    "default_data_root",
    "iterate_batches",
    "load_cifar",
    "normalize",
    "prepare_data",
    "stratified_split",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
CIFAR_IMAGES = 60_000  # train + test, both data sets; only sizes the progress bar


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one data set."""

    num_classes: int
    torchvision_class: str
    # Per-channel mean and std of the training images, in [0, 1] units; the
    # values commonly used for CIFAR (computed on the official training set).
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the facts for `name`, or raise DataError listing the known data sets."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}") from None


def cache_dir() -> Path:
    """Return the writable cache directory (`WRNLIB_CACHE`, default ~/.cache/wrnlib)."""
    env = os.environ.get("WRNLIB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wrnlib"


def default_data_root() -> Path:
    """Return `WRNLIB_DATA_ROOT`, else `<cache dir>/data` (where torchvision downloads)."""
    env = os.environ.get("WRNLIB_DATA_ROOT")
    return Path(env).expanduser() if env else cache_dir() / "data"


@dataclass
class CifarArrays:
    """A whole data set as uint8 images (N, 3, 32, 32) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

def _decode_image(data: bytes, where: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != (32, 32):
                raise DataError(f"image {where} is {img.size[0]}x{img.size[1]} pixels; CIFAR images must be 32x32")
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {where}: {exc}. Replace or remove the file.") from None
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(32, 32, 3).permute(2, 0, 1)


def _stack_split(entries: dict[str, list[tuple[str, torch.Tensor]]], classes: list[str]):
    images, labels = [], []
    for label, cls in enumerate(classes):
        # Files inside a class are taken in name order so that the cache, and
        # every seeded split drawn from it, is the same on every machine.
        for _, img in sorted(entries.get(cls, []), key=lambda item: item[0]):
            images.append(img)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _check_classes(name: str, where: str, train_classes: set[str], test_classes: set[str]) -> list[str]:
    expected = dataset_info(name).num_classes
    if not train_classes:
        raise DataError(f"no training images found in {where}: expected {name}/train/<class>/<image>")
    if len(train_classes) != expected:
        raise DataError(
            f"{where} has {len(train_classes)} class folders under train/, but {name} has {expected} classes. "
            f"Point the data root at a {name} copy."
        )
    if train_classes != test_classes:
        missing = sorted(train_classes ^ test_classes)
        raise DataError(f"{where}: train/ and test/ hold different class folders (differing: {missing[:5]})")
    return sorted(train_classes)


def _read_image_tree(name: str, tree: Path) -> CifarArrays:
    from tqdm import tqdm

    files = [p for p in sorted(tree.glob("*/*/*")) if p.suffix.lower() in IMAGE_SUFFIXES
             and p.parts[-3] in ("train", "test")]
    entries: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for path in tqdm(files, desc=f"decode {name}", unit="img", mininterval=2.0, leave=False):
        split, cls = path.parts[-3], path.parts[-2]
        entries[split].setdefault(cls, []).append((path.name, _decode_image(path.read_bytes(), str(path))))
    classes = _check_classes(name, str(tree), set(entries["train"]), set(entries["test"]))
    train_x, train_y = _stack_split(entries["train"], classes)
    test_x, test_y = _stack_split(entries["test"], classes)
    return CifarArrays(name, train_x, train_y, test_x, test_y, classes, f"imagefolder:{tree}")


def _read_archive(name: str, archive: Path) -> CifarArrays:
    from tqdm import tqdm

    entries: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    try:
        with tarfile.open(archive, "r:gz") as tar, tqdm(desc=f"decode {archive.name}", unit="img",
                                                      total=CIFAR_IMAGES, mininterval=2.0, leave=False) as bar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                    continue
                if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                data = tar.extractfile(member).read()
                img = _decode_image(data, f"{archive}:{member.name}")
                entries[parts[-3]].setdefault(parts[-2], []).append((parts[-1], img))
                bar.update()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot read archive {archive}: {exc}. Check the file or download it again.") from None
    classes = _check_classes(name, str(archive), set(entries["train"]), set(entries["test"]))
    train_x, train_y = _stack_split(entries["train"], classes)
    test_x, test_y = _stack_split(entries["test"], classes)
    return CifarArrays(name, train_x, train_y, test_x, test_y, classes, f"archive:{archive}")


def _read_torchvision(name: str, root: Path, download: bool) -> CifarArrays:
    import torchvision

    cls = getattr(torchvision.datasets, dataset_info(name).torchvision_class)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        raise DataError(
            f"{name} not found under data root {root}, and torchvision's download into it failed: {exc}. "
            f"{_layouts_hint(name, root)}"
        ) from None

    def to_tensor(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    train_x, train_y = to_tensor(train)
    test_x, test_y = to_tensor(test)
    return CifarArrays(name, train_x, train_y, test_x, test_y, list(train.classes), f"torchvision:{root}")


# --------------------------------------------------------------------------
# Source lookup and cache
# --------------------------------------------------------------------------

def _torchvision_folder(name: str) -> str:
    return {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]


def find_source(name: str, root: Path, download: bool) -> tuple[str, Path]:
    """Return (kind, path) of the first source of `name` under `root`."""
    dataset_info(name)
    tree = root / name
    archive = root / f"{name}.tar.gz"
    tv = root / _torchvision_folder(name)
    if (tree / "train").is_dir():
        return "imagefolder", tree
    if archive.is_file():
        return "archive", archive
    if tv.is_dir() or download:
        return "torchvision", root
    raise DataError(f"{name} not found under data root {root}. {_layouts_hint(name, root)}")


def _layouts_hint(name: str, root: Path) -> str:
    """Return the sentence that lists the layouts `find_source` accepts and how to point at one."""
    return (f"Looked for: {root / name}/train/ (ImageFolder), {root / (name + '.tar.gz')} (archive of that "
            f"folder) and {root / _torchvision_folder(name)}/ (torchvision files). Set --data-root or "
            "WRNLIB_DATA_ROOT to a folder that contains one of them, or allow the download on a machine "
            "with network access.")


def _cache_key(name: str, kind: str, path: Path) -> str:
    if kind == "imagefolder":
        # Stat of the train/test folders changes when files are added or removed.
        stats = [(p.name, p.stat().st_mtime_ns) for p in (path / "train", path / "test") if p.exists()]
    else:
        st = path.stat()
        stats = [(st.st_size, st.st_mtime_ns)]
    text = f"{name}|{kind}|{path.resolve()}|{stats}|v1"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_cifar(name: str, data_root: str | Path | None = None, download: bool = True,
               cache: str | Path | None = None) -> CifarArrays:
    """Load a whole data set as uint8 tensors, decoding it only on the first call.

    Raises DataError when the data root or the data set is missing or malformed.
    """
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if data_root is not None and not root.exists():
        raise DataError(f"data root {root} does not exist. Pass an existing folder with --data-root "
                        "or WRNLIB_DATA_ROOT.")
    if root.exists() and not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder. Pass the folder that contains {name}.tar.gz "
                        f"or {name}/ with --data-root or WRNLIB_DATA_ROOT.")
    kind, path = find_source(name, root, download)
    cdir = Path(cache).expanduser() if cache is not None else cache_dir()
    cache_file = cdir / f"{name}-{kind}-{_cache_key(name, kind, path) if path.exists() else 'tv'}.pt"
    if cache_file.exists():
        try:
            blob = torch.load(cache_file, mmap=True, weights_only=True)
            return CifarArrays(name, blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"],
                               list(blob["classes"]), blob["source"])
        except Exception:  # a truncated or foreign cache file is rebuilt below
            pass

    if kind == "imagefolder":
        arrays = _read_image_tree(name, path)
    elif kind == "archive":
        arrays = _read_archive(name, path)
    else:
        root.mkdir(parents=True, exist_ok=True)
        arrays = _read_torchvision(name, root, download)
        cache_file = cdir / f"{name}-{kind}-{_cache_key(name, kind, root / _torchvision_folder(name))}.pt"
    _check_counts(arrays)

    try:
        cdir.mkdir(parents=True, exist_ok=True)
        from .runs import atomic_torch_save

        # NOTE: a process killed during this write leaves its temporary file (about 185 MB per
        # data set) in the cache folder; nothing deletes it.
        atomic_torch_save({
            "train_x": arrays.train_x, "train_y": arrays.train_y,
            "test_x": arrays.test_x, "test_y": arrays.test_y,
            "classes": arrays.classes, "source": arrays.source,
        }, cache_file)
    except OSError:
        # A read-only cache only costs speed: the next load decodes again.
        pass
    return arrays


def _check_counts(arrays: CifarArrays) -> None:
    expected = dataset_info(arrays.name).num_classes
    if len(arrays.classes) != expected:
        raise DataError(f"{arrays.source} has {len(arrays.classes)} classes; {arrays.name} has {expected}")
    for split, y in (("train", arrays.train_y), ("test", arrays.test_y)):
        present = torch.unique(y).numel()
        if present != expected:
            raise DataError(f"{arrays.source}: the {split} split has images of {present} classes, expected {expected}")


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------

def stratified_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of `labels` into (rest, chosen) with `size` chosen, spread evenly over classes.

    Classes get floor(size / C) each and the remainder goes to the first classes;
    within a class the choice is a seeded permutation.
    """
    num = labels.numel()
    if size < 0 or size > num:
        raise ValueError(f"cannot take {size} of {num} images: the size must be between 0 and {num}")
    classes = torch.unique(labels)
    generator = torch.Generator().manual_seed(seed)
    per_class, extra = divmod(size, classes.numel())
    chosen, rest = [], []
    for i, c in enumerate(classes.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        take = per_class + (1 if i < extra else 0)
        if take > idx.numel():
            raise ValueError(f"class {c} has {idx.numel()} images, fewer than the {take} requested")
        chosen.append(idx[:take])
        rest.append(idx[take:])
    return torch.sort(torch.cat(rest)).values, torch.sort(torch.cat(chosen)).values


@dataclass
class DataSplits:
    """Train, validation and test tensors of one run, with the normalisation constants."""

    dataset: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    val_is_test: bool

    def to(self, device: torch.device | str, memory_format: torch.memory_format = torch.contiguous_format
           ) -> "DataSplits":
        """Move every tensor to `device` (uint8 images stay uint8), images in `memory_format`."""
        moved = {}
        for key, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device)
                if value.dtype == torch.uint8:
                    value = value.contiguous(memory_format=memory_format)
            moved[key] = value
        return DataSplits(**moved)

    def describe(self) -> dict:
        return {
            "dataset": self.dataset,
            "train_images": int(self.train_y.numel()),
            "val_images": int(self.val_y.numel()),
            "test_images": int(self.test_y.numel()),
            "val_is_test": self.val_is_test,
        }


def prepare_data(dataset: str, data_root: str | Path | None = None, *, val_size: int = 5000,
                 train_subset: int | None = None, test_subset: int | None = None, seed: int = 0,
                 download: bool = True) -> DataSplits:
    """Load `dataset` and carve the seeded, stratified splits of one run.

    `val_size` images are held out of the training set; with 0 the test set
    doubles as the validation set (`val_is_test`). `train_subset` and
    `test_subset` (None = all) take stratified subsets for small profiles.
    """
    info = dataset_info(dataset)
    arrays = load_cifar(dataset, data_root, download=download)
    try:
        rest, val_idx = stratified_split(arrays.train_y, val_size, seed)
    except ValueError as exc:
        raise ConfigError(f"val_size={val_size} does not fit the {dataset} training set: {exc}") from None
    if train_subset is not None:
        if train_subset > rest.numel():
            raise ConfigError(f"train_subset={train_subset} exceeds the {rest.numel()} training images left "
                              f"after the validation split of {val_size}")
        _, pick = stratified_split(arrays.train_y[rest], train_subset, seed + 1)
        rest = rest[pick]
    test_idx = torch.arange(arrays.test_y.numel())
    if test_subset is not None:
        try:
            _, test_idx = stratified_split(arrays.test_y, test_subset, seed + 2)
        except ValueError as exc:
            raise ConfigError(f"test_subset={test_subset} does not fit the {dataset} test set: {exc}") from None
    test_x, test_y = arrays.test_x[test_idx], arrays.test_y[test_idx]
    if val_size == 0:
        val_x, val_y = test_x, test_y
    else:
        val_x, val_y = arrays.train_x[val_idx], arrays.train_y[val_idx]
    return DataSplits(
        dataset=dataset,
        train_x=arrays.train_x[rest].contiguous(),
        train_y=arrays.train_y[rest].contiguous(),
        val_x=val_x.contiguous(),
        val_y=val_y.contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
        num_classes=info.num_classes,
        mean=torch.tensor(info.mean).view(1, 3, 1, 1),
        std=torch.tensor(info.std).view(1, 3, 1, 1),
        val_is_test=val_size == 0,
    )


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------

def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random-crop (zero padding of `padding` pixels) and horizontally flip a uint8 batch.

    Each image gets its own offset in [0, 2 * padding] per axis and a flip with
    probability 0.5, drawn from `generator` (which must live on x's device).
    The result has shape (N, C, H, W) in channels-last memory format, the
    layout the training loop feeds to the network.
    """
    n, c, h, w = x.shape
    device = x.device
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)[None, :]
    cols = dx[:, None] + torch.arange(w, device=device)[None, :]
    # Flipping reverses the column order of the crop window.
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Gather whole pixels (all channels at once) from an (N, H, W, C) view: one
    # index per pixel instead of one per value, and the permuted result is
    # channels-last without a further copy.
    pixels = padded.permute(0, 2, 3, 1)
    batch_index = torch.arange(n, device=device)[:, None, None]
    return pixels[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and standardise each channel; returns float32.

    Computed as one multiply-add, x * (1 / (255 std)) - mean / std, which keeps
    the memory format of `x` (channels-last stays channels-last).
    """
    scale = (1.0 / (255.0 * std)).to(x.device)
    shift = (-mean / std).to(x.device)
    return x.float().mul_(scale).add_(shift)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False):
    """Yield (x, y) slices of a tensor data set, in a seeded order when `shuffle`."""
    n = y.numel()
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu")
        order = order.to(x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
