"""What each named dataset is: its canonical files with md5 and size, mirrors, classes, citation;
and where the data directory is.

Layout inside a data directory (mirrors ../shared/data):

    <dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <dir>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <dir>/cifar10/cifar-10-python.tar.gz

`mini_mnist` is not looked up there: it ships inside the package (distnn/data/mini/).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MINI_DIR = Path(__file__).resolve().parent / "mini"
ENV_DATA_DIR = "DISTNN_DATA_DIR"
ENV_OFFLINE = "DISTNN_OFFLINE"  # set to 1: never try to download


@dataclass(frozen=True)
class FileSpec:
    name: str  # file name inside the dataset's folder
    md5: str
    size: int  # bytes


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # sub-folder of the data directory ("" for bundled sets)
    kind: str  # "idx" (images + labels file per split) or "cifar" (one archive)
    splits: dict  # split -> tuple[FileSpec, ...]
    counts: dict  # split -> number of samples
    image_shape: tuple  # (H, W, C)
    class_names: tuple
    mirrors: tuple  # base URLs, tried in order; empty for bundled sets
    citation: str
    bundled: bool = False

    @property
    def files(self) -> tuple:
        """Every distinct file of the dataset (the CIFAR archive serves both splits)."""
        seen: dict[str, FileSpec] = {}
        for files in self.splits.values():
            for f in files:
                seen.setdefault(f.name, f)
        return tuple(seen.values())


def _idx_splits(md5: dict, sizes: dict) -> dict:
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    return {split: tuple(FileSpec(n, md5[n], sizes[n]) for n in pair)
            for split, pair in names.items()}


MNIST_CITATION = ("Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, \"Gradient-based learning "
                  "applied to document recognition\", Proceedings of the IEEE "
                  "86(11):2278-2324, 1998.")

MNIST = DatasetSpec(
    name="mnist", folder="mnist", kind="idx",
    splits=_idx_splits(
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
         "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}),
    counts={"train": 60000, "test": 10000}, image_shape=(28, 28, 1),
    class_names=tuple(str(d) for d in range(10)),
    # yann.lecun.com no longer serves the files; these mirrors hold the byte-identical originals.
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    citation=MNIST_CITATION,
)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist", folder="fashion-mnist", kind="idx",
    splits=_idx_splits(
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        {"train-images-idx3-ubyte.gz": 26421880, "train-labels-idx1-ubyte.gz": 29515,
         "t10k-images-idx3-ubyte.gz": 4422102, "t10k-labels-idx1-ubyte.gz": 5148}),
    counts={"train": 60000, "test": 10000}, image_shape=(28, 28, 1),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    citation=("Han Xiao, Kashif Rasul and Roland Vollgraf, \"Fashion-MNIST: a Novel Image Dataset "
              "for Benchmarking Machine Learning Algorithms\", arXiv:1708.07747, 2017."),
)

CIFAR10_ARCHIVE = FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 170498071)

CIFAR10 = DatasetSpec(
    name="cifar10", folder="cifar10", kind="cifar",
    splits={"train": (CIFAR10_ARCHIVE,), "test": (CIFAR10_ARCHIVE,)},
    counts={"train": 50000, "test": 10000}, image_shape=(32, 32, 3),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    citation=("Alex Krizhevsky, \"Learning Multiple Layers of Features from Tiny Images\", "
              "technical report, University of Toronto, 2009."),
)

# Regenerate with `python -m distnn.data.make_mini`; the md5s pin the bundled bytes.
MINI_MNIST = DatasetSpec(
    name="mini_mnist", folder="", kind="idx",
    splits=_idx_splits(
        {"train-images-idx3-ubyte.gz": "61fb2858ec62af2b8f42f74b06b3302e",
         "train-labels-idx1-ubyte.gz": "9c28d160af3f4ebc0872f6b1020de05f",
         "t10k-images-idx3-ubyte.gz": "0c70a5120665bcdb3ad2f039c905ca59",
         "t10k-labels-idx1-ubyte.gz": "ef2ad5555e9f950f2f8bbf850753f891"},
        {"train-images-idx3-ubyte.gz": 1294585, "train-labels-idx1-ubyte.gz": 4082,
         "t10k-images-idx3-ubyte.gz": 322662, "t10k-labels-idx1-ubyte.gz": 1028}),
    counts={"train": 8000, "test": 2000}, image_shape=(28, 28, 1),
    class_names=MNIST.class_names, mirrors=(), citation=MNIST_CITATION, bundled=True,
)

SPECS = {s.name: s for s in (MNIST, FASHION_MNIST, CIFAR10, MINI_MNIST)}
ALIASES = {"fashion-mnist": "fashion_mnist", "cifar-10": "cifar10", "mini-mnist": "mini_mnist"}


def lookup(name: str) -> DatasetSpec | None:
    """The spec of a dataset name (case-insensitive, '-' or '_'), or None."""
    key = name.strip().lower()
    return SPECS.get(ALIASES.get(key, key))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The explicit argument, else $DISTNN_DATA_DIR, else the per-user cache
    ($XDG_CACHE_HOME/distnn, by default ~/.cache/distnn)."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "distnn"


def dataset_folder(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Path:
    """Where the spec's files live: the package's mini/ for bundled sets, else <dir>/<folder>."""
    if spec.bundled:
        return MINI_DIR
    return resolve_data_dir(data_dir) / spec.folder
