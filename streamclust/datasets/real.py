"""A case of REAL images with real out-of-distribution rows, laid out like the IntelliVision case.

The demo case (:mod:`streamclust.datasets.synthetic`) is synthetic: what it proves about
outlier screening depends on how its anomalies were planted.  This module builds
a case from real photographs that packages ship, so quality claims can be checked
on data the project never shaped:

* **in-distribution**: the 70,000 Fashion-MNIST product photos (28 x 28 grey),
  from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist/*-idx3-ubyte.gz``; ``apt-get install
  dataset-fashion-mnist``), or any folder holding the four IDX files;
* **out-of-distribution** (``ood_fraction`` of the items, 1 % by default, in equal
  shares of :data:`OOD_KINDS`), real images from other sources or real failures:

  ``digits``
      scikit-learn's 1,797 handwritten digits (8 x 8 scans, shipped in
      scikit-learn), scaled to 20 x 20 and centred like MNIST;
  ``letters``
      letters and digits rendered from the TrueType fonts matplotlib ships
      (the DejaVu, STIX General and Computer Modern text faces);
  ``photos``
      crops of the photographs shipped by scikit-learn (``china.jpg``,
      ``flower.jpg``) and matplotlib (``grace_hopper.jpg``), grey, scaled to 28 x 28;
  ``dark``
      a product photo under-exposed to 6-20 % with sensor noise (all dark frames
      look alike, as in a real camera feed);
  ``glare``
      a product photo washed out with a saturated blob of light.

  Anomalies of one kind resemble each other, so they come in groups, as real
  ones do: what a density-ratio score (LOF) hides, this case shows.

* **several shots of each item** (``shots``; VeRi-Wild shows each vehicle about
  10 times): shot 0 is the photo itself, the others are shifted by up to 2 pixels,
  with contrast changed by up to 20 % and sensor noise.  ``shots=6`` gives
  424,200 rows from the 70,000 photos plus 700 anomalies.

Descriptor sets (``descriptors/<set>.pickle``, float32, one row per image)
--------------------------------------------------------------------------
``pixels`` (784)
    the grey values / 255;
``hog`` (144)
    histograms of oriented gradients: 9 unsigned orientation bins in each of
    4 x 4 cells of 7 x 7 pixels, weighted by gradient magnitude (no block
    normalisation, so a faint image has small values);
``cnn`` (1280)
    the ReLU activations of the penultimate layer of a small convolutional
    network (2 x [two 3 x 3 convolutions, max-pool], 1280 units, 10 classes)
    trained on the 70,000 in-distribution photos and their 10 classes (2 epochs,
    Adam, seeded), as re-identification networks are trained on the domain they
    describe.  Needs PyTorch (``pip install torch``); the set is left out (with a
    message) when it is missing and not asked for.

Files written
-------------
``descriptors/<set>.pickle``, ``images_paths.csv`` (``paths``, Windows separators:
``fashion\\<5-digit item>\\<7-digit image>.png``; rows sorted by item, then shot),
and ``truth.csv`` (``path``, ``item``, ``shot``, ``category`` -- the Fashion-MNIST
class, empty for anomalies from other sources --, ``ood_kind`` -- empty for
in-distribution rows -- and ``is_ood``), read back by :func:`load_real_truth`.
No images are written: the case is for measuring the descriptors' screening.

Determinism and memory
----------------------
Everything depends on ``seed`` (and the library versions: PyTorch's training is
seeded and single-process, but its kernels may differ across machines).  The 70,000
source photos (55 MB) are held; the shots are drawn and described block by block,
so the peak is a few hundred MB whatever ``shots``.
"""

from __future__ import annotations

import gzip
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamclust.core.logs import forward_log
from streamclust.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["FASHION_MNIST_DIR", "OOD_KINDS", "REAL_SETS", "make_real_case", "load_real_truth",
           "load_fashion_mnist", "describe"]

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

#: Kinds of out-of-distribution rows, in equal shares.
OOD_KINDS = ("digits", "letters", "photos", "dark", "glare")

#: Descriptor sets and their widths.
REAL_SETS = {"pixels": 784, "hog": 144, "cnn": 1280}

#: Fashion-MNIST's class names, by label.
CATEGORIES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
              "ankle boot")

_SIDE = 28
_BLOCK = 8192


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------
def _read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (gzip or plain) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise InputError(f"{path}: not an unsigned-byte IDX file.")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{path}: {body.size} values where the header declares {dims}.")
    return body.reshape(dims)


def load_fashion_mnist(folder: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 70,000 Fashion-MNIST photos (train then test) and their labels.

    Parameters
    ----------
    folder : path or None
        Folder with ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``; None for
        :data:`FASHION_MNIST_DIR`.

    Returns
    -------
    images : ndarray of uint8, shape (70000, 28, 28)
    labels : ndarray of uint8, shape (70000,)

    Raises
    ------
    InputError
        If a file is missing (naming the Debian package that ships them) or malformed.
    """
    root = pathlib.Path(folder) if folder is not None else FASHION_MNIST_DIR
    parts = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        found = [p for p in (root / f"{stem}.gz", root / stem) if p.is_file()]
        if not found:
            raise InputError(
                f"{root / stem}[.gz]: missing. Fashion-MNIST ships in Debian's package "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or pass the folder "
                "that holds its four IDX files.")
        parts.append(_read_idx(found[0]))
    images = np.concatenate([parts[0], parts[2]])
    labels = np.concatenate([parts[1], parts[3]])
    if images.shape[1:] != (_SIDE, _SIDE) or len(labels) != len(images):
        raise InputError(f"{root}: images of shape {images.shape[1:]} and {len(labels)} labels "
                         f"for {len(images)} images; expected 28 x 28 and one label each.")
    return images, labels


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(shape[::-1], Image.BILINEAR))


def _digits(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    scans = load_digits().images  # (1797, 8, 8), 0..16
    out = np.zeros((n, _SIDE, _SIDE), np.uint8)
    for i, j in enumerate(rng.choice(len(scans), n, replace=n > len(scans))):
        small = np.clip(scans[j] * 16, 0, 255).astype(np.uint8)
        out[i, 4:24, 4:24] = _resize(small, (20, 20))
    return out


#: Computer Modern faces with Latin letters (cmex10, cmsy10 and cmmi10 are symbol faces;
#: DejaVu's Display faces hold no letters either).
_TEXT_CM_FONTS = ("cmr10", "cmss10", "cmtt10", "cmb10", "cmti10")


def _fonts() -> list[pathlib.Path]:
    import matplotlib

    folder = pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    # text faces only: the symbol, size-variant and fallback fonts lack letters
    return sorted(p for p in folder.glob("*.ttf")
                  if (p.name.startswith(("DejaVu", "STIXGeneral")) and "Display" not in p.name)
                  or p.stem in _TEXT_CM_FONTS)


def _letters(rng: np.random.Generator, n: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    fonts = _fonts()
    glyphs = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrty0123456789"
    out = np.zeros((n, _SIDE, _SIDE), np.uint8)
    for i in range(n):
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(18, 25)))
        ch = glyphs[rng.integers(len(glyphs))]
        canvas = Image.new("L", (_SIDE, _SIDE), 0)
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
        draw.text(((_SIDE - (right - left)) / 2 - left, (_SIDE - (bottom - top)) / 2 - top), ch,
                  fill=int(rng.integers(180, 256)), font=font)
        out[i] = np.asarray(canvas)
    return out


def _photo_sources() -> list[np.ndarray]:
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(Image.fromarray(im).convert("L")) for im in load_sample_images().images]
    hopper = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photos.append(np.asarray(Image.open(hopper).convert("L")))
    return photos


def _photos(rng: np.random.Generator, n: int) -> np.ndarray:
    photos = _photo_sources()
    out = np.empty((n, _SIDE, _SIDE), np.uint8)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        side = int(rng.integers(40, min(p.shape) // 2))
        y, x = rng.integers(0, p.shape[0] - side), rng.integers(0, p.shape[1] - side)
        out[i] = _resize(np.ascontiguousarray(p[y:y + side, x:x + side]), (_SIDE, _SIDE))
    return out


def _dark(rng: np.random.Generator, photos: np.ndarray) -> np.ndarray:
    x = photos.astype(np.float32) * rng.uniform(0.06, 0.2, (len(photos), 1, 1))
    x += rng.normal(0, 3.0, x.shape) + rng.uniform(0, 6, (len(photos), 1, 1))
    return np.clip(x, 0, 255).astype(np.uint8)


def _glare(rng: np.random.Generator, photos: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:_SIDE, 0:_SIDE].astype(np.float32)
    out = np.empty_like(photos)
    for i, im in enumerate(photos.astype(np.float32)):
        cy, cx, sigma = rng.uniform(4, 24), rng.uniform(4, 24), rng.uniform(5, 11)
        blob = np.clip(rng.uniform(1.2, 2.0) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2)),
                       0, 1)
        wash = rng.uniform(0.3, 0.6)
        im = im * (1 - wash) + 200.0 * wash
        out[i] = np.clip(im + (255.0 - im) * blob, 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------
def hog_features(images: np.ndarray) -> np.ndarray:
    """Histograms of oriented gradients, ``(n, 144)`` float32 of ``(n, 28, 28)`` images.

    Central-difference gradients of the grey values / 255; each pixel votes its
    magnitude into the two nearest of 9 unsigned orientation bins (linear
    interpolation) of its 7 x 7 cell; 4 x 4 cells.  No normalisation.
    """
    x = images.astype(np.float32) / 255.0
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi) / (np.pi / 9) - 0.5  # bin centres at 0..8
    lo = np.floor(ang).astype(np.int64)
    frac = (ang - lo).astype(np.float32)
    lo %= 9
    hi = (lo + 1) % 9
    n = len(x)
    cell = (np.arange(_SIDE) // 7)
    cell_id = (cell[:, None] * 4 + cell[None, :]).ravel()  # (784,)
    out = np.zeros((n, 16 * 9), np.float64)
    flat_lo = (cell_id[None, :] * 9 + lo.reshape(n, -1))
    flat_hi = (cell_id[None, :] * 9 + hi.reshape(n, -1))
    m = mag.reshape(n, -1)
    f = frac.reshape(n, -1)
    rows = np.repeat(np.arange(n), _SIDE * _SIDE)
    np.add.at(out, (rows, flat_lo.ravel()), (m * (1 - f)).ravel())
    np.add.at(out, (rows, flat_hi.ravel()), (m * f).ravel())
    return out.astype(np.float32)


class _CNN:
    """The small convolutional network of the ``cnn`` set (PyTorch), trained on first use."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
        import torch
        from torch import nn

        torch.manual_seed(seed)
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        self.torch = torch
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, REAL_SETS["cnn"]), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(REAL_SETS["cnn"], len(CATEGORIES)))
        model = nn.Sequential(self.features, self.head)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = np.random.default_rng([seed, 7])
        x_all = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        y_all = torch.from_numpy(labels.astype(np.int64))
        model.train()
        for epoch in range(2):
            order = torch.from_numpy(gen.permutation(len(images)))
            total = 0.0
            for s in range(0, len(order), 128):
                idx = order[s:s + 128]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            logger.info(f"cnn: epoch {epoch + 1}/2, training loss {total / len(order):.3f}")
        model.eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            x = self.torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
            return self.features(x).numpy().astype(np.float32)


def describe(images: np.ndarray, name: str, cnn: _CNN | None = None) -> np.ndarray:
    """Descriptors of set ``name`` of ``(n, 28, 28)`` uint8 images: ``(n, REAL_SETS[name])`` float32."""
    if name == "pixels":
        return images.reshape(len(images), -1).astype(np.float32) / 255.0
    if name == "hog":
        return hog_features(images)
    if name == "cnn":
        if cnn is None:
            raise ValueError("the cnn set needs the trained network")
        return cnn(images)
    raise ValueError(f"unknown descriptor set {name!r}; expected one of {sorted(REAL_SETS)}")


# --------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------
@dataclass
class _Plan:
    source: np.ndarray    # (n_items, 28, 28) uint8: the shot-0 photo of each item
    kind: np.ndarray      # (n_items,) int8: -1 in-distribution, else index into OOD_KINDS
    category: np.ndarray  # (n_items,) int8: Fashion-MNIST class, -1 for external anomalies
    shots: int


def _make_plan(images: np.ndarray, labels: np.ndarray, n_items: int | None, ood_fraction: float,
               shots: int, seed: int) -> _Plan:
    rng = np.random.default_rng([seed, 0])
    n_in = len(images) if n_items is None else int(n_items)
    pick = np.sort(rng.choice(len(images), n_in, replace=False)) if n_in < len(images) else np.arange(n_in)
    n_ood = int(round(n_in * ood_fraction))
    per_kind = np.bincount(np.arange(n_ood) % len(OOD_KINDS), minlength=len(OOD_KINDS))
    sources = [images[pick]]
    kinds = [np.full(n_in, -1, np.int8)]
    cats = [labels[pick].astype(np.int8)]
    for k, (name, m) in enumerate(zip(OOD_KINDS, per_kind)):
        krng = np.random.default_rng([seed, 10 + k])
        if name in ("dark", "glare"):  # degraded product photos keep their class
            base = krng.choice(len(images), m)
            made = (_dark if name == "dark" else _glare)(krng, images[base])
            cat = labels[base].astype(np.int8)
        else:  # images from another source have none
            made = {"digits": _digits, "letters": _letters, "photos": _photos}[name](krng, m)
            cat = np.full(m, -1, np.int8)
        sources.append(made)
        kinds.append(np.full(m, k, np.int8))
        cats.append(cat)
    order = rng.permutation(sum(len(s) for s in sources))
    return _Plan(np.concatenate(sources)[order], np.concatenate(kinds)[order],
                 np.concatenate(cats)[order], int(shots))


def _shots(plan: _Plan, lo: int, hi: int, seed: int) -> np.ndarray:
    """Images of rows ``lo:hi`` (row = item * shots + shot), seeded per block start."""
    rows = np.arange(lo, hi)
    items, shot = rows // plan.shots, rows % plan.shots
    out = plan.source[items].copy()
    moved = np.flatnonzero(shot > 0)
    if moved.size:
        rng = np.random.default_rng([seed, 1, lo])
        x = out[moved].astype(np.float32)
        dy, dx = rng.integers(-2, 3, (2, len(moved)))
        for j in range(len(moved)):
            x[j] = np.roll(x[j], (dy[j], dx[j]), axis=(0, 1))
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = (x - mean) * rng.uniform(0.8, 1.2, (len(moved), 1, 1)) + mean
        x += rng.normal(0, 1, x.shape) * rng.uniform(0, 6, (len(moved), 1, 1))
        out[moved] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def make_real_case(
    out_dir: str | os.PathLike[str],
    *,
    shots: int = 1,
    n_items: int | None = None,
    ood_fraction: float = 0.01,
    sets: Sequence[str] | None = None,
    seed: int = 0,
    source: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> pathlib.Path:
    """Write a case of real images with real anomalies (see the module documentation).

    Parameters
    ----------
    out_dir : path
        Case folder to create (``descriptors/``, ``images_paths.csv``, ``truth.csv``).
    shots : int, default 1
        Rows per item (shot 0 is the photo itself).
    n_items : int or None
        In-distribution photos used (a seeded sample); None for all 70,000.
    ood_fraction : float, default 0.01
        Anomalous items per in-distribution item: ``round(n_items * ood_fraction)``.
    sets : sequence of str or None
        Descriptor sets to write (of :data:`REAL_SETS`); None for all, ``cnn`` only
        when PyTorch is installed.
    seed : int
    source : path or None
        Folder of the Fashion-MNIST IDX files (None: Debian's package).
    log : callable or None, default print
        Receives the progress lines (logged to ``logging`` under ``streamclust.datasets.real``
        in any case).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    InputError
        Bad arguments, missing Fashion-MNIST files, or ``cnn`` asked for without PyTorch.
    """
    with forward_log(log):
        return _write_real_case(out_dir, shots=shots, n_items=n_items, ood_fraction=ood_fraction, sets=sets,
                                seed=seed, source=source)


def _write_real_case(out_dir: str | os.PathLike[str], *, shots: int, n_items: int | None, ood_fraction: float,
                     sets: Sequence[str] | None, seed: int, source: str | os.PathLike[str] | None) -> pathlib.Path:
    """:func:`make_real_case` with its progress lines logged."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise InputError(f"shots={shots!r} should be an integer >= 1.")
    if not 0.0 <= float(ood_fraction) <= 0.5:
        raise InputError(f"ood_fraction={ood_fraction!r} should lie in [0, 0.5].")
    if n_items is not None and (isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer))
                                or not 1 <= n_items <= 70_000):
        raise InputError(f"n_items={n_items!r} should be None or an integer in [1, 70000].")
    import importlib.util

    has_torch = importlib.util.find_spec("torch") is not None
    if sets is None:
        sets = list(REAL_SETS) if has_torch else [s for s in REAL_SETS if s != "cnn"]
        if not has_torch:
            logger.info("real case: PyTorch is not installed, so the cnn set is left out (pip install torch)")
    unknown = [s for s in sets if s not in REAL_SETS]
    if unknown:
        raise InputError(f"sets={list(sets)!r}: unknown {unknown}; expected some of {list(REAL_SETS)}.")
    if "cnn" in sets and not has_torch:
        raise InputError("the cnn set needs PyTorch: pip install torch.")

    from streamclust.io.pickle_stream import write_pickled_array

    out = pathlib.Path(out_dir)
    (out / "descriptors").mkdir(parents=True, exist_ok=True)
    images, labels = load_fashion_mnist(source)
    plan = _make_plan(images, labels, n_items, float(ood_fraction), int(shots), seed)
    n_rows = len(plan.source) * plan.shots
    _write_tables(plan, out)
    cnn = _CNN(images, labels, seed) if "cnn" in sets else None
    del images
    for name in sets:
        def blocks(name: str = name) -> Iterator[np.ndarray]:
            for lo in range(0, n_rows, _BLOCK):
                yield describe(_shots(plan, lo, min(lo + _BLOCK, n_rows), seed), name, cnn)

        write_pickled_array(out / "descriptors" / f"{name}.pickle", (n_rows, REAL_SETS[name]),
                            np.float32, blocks(), protocol=4)
        logger.info(f"real case: {name} ({n_rows:,} x {REAL_SETS[name]}) written")
    return out


def _write_tables(plan: _Plan, out: pathlib.Path) -> None:
    n_items = len(plan.source)
    rows = np.arange(n_items * plan.shots)
    items = rows // plan.shots
    paths = [f"fashion\\{i + 1:05d}\\{r + 1:07d}.png" for i, r in zip(items, rows)]
    pd.DataFrame({"paths": paths}).to_csv(out / "images_paths.csv", index=False)
    kind = plan.kind[items]
    cat = plan.category[items]
    names = np.array(("",) + OOD_KINDS, dtype=object)
    cat_names = np.array(("",) + CATEGORIES, dtype=object)
    pd.DataFrame({
        "path": [p.replace("\\", "/") for p in paths], "item": items + 1, "shot": rows % plan.shots,
        "category": cat_names[cat.astype(np.int64) + 1], "ood_kind": names[kind.astype(np.int64) + 1],
        "is_ood": kind >= 0,
    }).to_csv(out / "truth.csv", index=False)


def load_real_truth(case_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The truth of a case written by :func:`make_real_case`.

    Returns
    -------
    pandas.DataFrame
        One row per image in row order (shape ``(n_rows, 6)``): ``path``, ``item``,
        ``shot``, ``category``, ``ood_kind`` (``""`` in-distribution), ``is_ood`` (bool).
    """
    path = pathlib.Path(case_dir) / "truth.csv"
    if not path.is_file():
        raise InputError(f"{path}: missing; only cases made by make_real_case have this truth.")
    df = pd.read_csv(path, dtype={"path": str, "category": str, "ood_kind": str}, keep_default_na=False)
    expected = ["path", "item", "shot", "category", "ood_kind", "is_ood"]
    if list(df.columns) != expected:
        raise InputError(f"{path}: columns {list(df.columns)}, expected {expected}.")
    df["is_ood"] = df["is_ood"].astype(str).str.lower().eq("true")
    return df
