"""A demo case generator with planted truth, shaped like the IntelliVision case.

The real case streamclust was built for holds 416,314 VeRi-Wild vehicle images
and four descriptor sets computed by different networks.  Real cases come with
no ground truth at all; :func:`make_demo_case` writes a synthetic case of the
same layout whose truth is known, so the whole pipeline (conversion, reduction,
clustering, outlier screening, montages) can be exercised and scored.

Case layout (all written by :func:`make_demo_case`)
---------------------------------------------------
``descriptors/<name>.pickle``
    One pickled float32 array of shape ``(n_rows, DESCRIPTOR_DIMS[name])`` per
    set (``pickle.dump(arr, f, protocol=4)`` layout, written streamed).
``images_paths.csv``
    One column ``paths`` with Windows separators, e.g.
    ``veriwild\\1\\00001\\000001.jpg`` (``veriwild\\1\\<5-digit vehicle
    id>\\<6-digit image id>.jpg``); row i is row i of every descriptor array;
    rows are sorted by vehicle id, then image id.  Image ids are global running
    numbers (they get a 7th digit beyond 999,999 rows).
``images.zip``
    (``images=True``) one small JPEG (64 x 48 pixels) per row, named like the
    CSV paths with forward slashes (``veriwild/1/00001/000001.jpg``).
``vehicle_info.txt``
    VeRi-Wild metadata: header ``id/image;Camera ID;Time;Model;Type;Color``,
    then lines like ``00001/000001;c004;2018-03-04 09:33:10; Audi A4; sedan;
    white`` (values after the time carry a leading space, as in the real file),
    ordered by camera then time, i.e. *not* in the row order of the CSV.
``truth.csv``
    The planted truth, one row per image in CSV row order: ``path`` (forward
    slashes), ``vehicle_id``, ``color``, ``type``, ``view``, ``model``,
    ``camera``, ``outlier_kind`` (empty for normal images), ``is_outlier``
    and ``outlier_group`` (the group of similar outlier pictures the row
    belongs to, numbered from 0; -1 for normal images and isolated
    outliers).  The attributes of an outlier are those of the vehicle its
    record belongs to, even where the picture hides it (``dark``) or lacks
    it (``no_vehicle``).  Demo cases only: a real case has no such file.
    Read it with :func:`load_truth`.

Planted truth
-------------
Vehicles (5 to 40 images each, about 10 on average as in VeRi-Wild) have a
fixed colour (:data:`COLORS`, with traffic-like frequencies: white, black and
silver are most common), body type (:data:`TYPES`: sedan most common, bus
rarest) and a type-specific model (:data:`MODELS`; each model also tweaks the
body's length and height slightly).  Each image comes from one of 174 cameras
(background tone, tint, brightness), at a time of day (darker at dawn and
dusk) and from a view (:data:`VIEWS`: front, rear or side, facing left or
right), with jitter in position, scale, colour, lighting and sensor noise.

Exactly ``round(outlier_fraction * n_rows)`` of the images are outliers of
one of the :data:`OUTLIER_KINDS`, in equal shares (within one):
``glare`` (a large saturated white blob, sometimes with a streak, on a
washed-out picture), ``dark`` (5-15 % of normal brightness, noisy),
``no_vehicle`` (road only, with one to three lane markings, poles or
passers-by) and ``blur`` (strong defocus or motion blur).  As on real
images, bad pictures come in groups that look alike (a camera dazzled or
at night for a while, the same empty road shot again and again): two
thirds of the glare, dark and no_vehicle outliers (half of all outliers)
are in groups, ``max(1, round(0.3 sqrt(m)))`` groups for the ``m``
grouped rows of a kind, of at least 3 rows and log-normally varied sizes
(at 1 % outliers: one group of 10 per kind at 6,000 rows, 4 to 29 rows at
20,000, 25 to 200 at 416,314).  A group is one scene: one camera and view,
the same road texture, vehicle position and scale (jittered by 15 %), the
same glare blob, darkness or clutter (jittered slightly), and it is drawn
as runs of 1 to 10 consecutive shots of one vehicle, as VeRi-Wild has
about ten shots a vehicle.  The other outliers (all the blurred ones) are
isolated rows drawn at random, each with its own parameters.

How the descriptors are made, and how each set sees the truth
-------------------------------------------------------------
Every image is rendered as a 48 x 64 RGB picture (road with a haze gradient
and texture, a body silhouette whose shape depends on type, view and model,
windows, wheels, head- or tail-lights, plate, shadow, colour fill with
shading, camera lighting and tint, sensor noise), the outlier transforms are
applied, and the descriptors are computed **from those pixels**, so clusters
and montages agree.  Pixel features (``_raw_features``; 292 values a picture):

* colour: a soft histogram over 10 colour prototypes of the white-balanced
  colours of the foreground pixels in the central region, plus their mean
  colour, chroma, brightness and saturation;
* type and view: the foreground mask (difference to a background estimated
  from the top and bottom rows), aligned on its bottom row and centroid and
  matched (IoU) against canonical silhouettes of every type, view and three
  scales: the best match per type is a view-invariant "type detector", the
  best side and front/rear matches, tail-light, head-light and glass cues
  make a "view detector";
* the mask averaged to 12 x 16 (shape and position), a 6 x 8 map of edge
  strength;
* 16 image statistics: brightness, contrast, saturated and dark fractions,
  sharpness (including a contrast-free fine/coarse edge ratio), fine detail,
  colourfulness, road level, haze and tint, foreground fraction.

They are standardised with the statistics of a fixed calibration set of
4096 normal images and squashed with ``6 tanh(z / 6)``; 32 "quality
detectors" ``clip(+-z - 2.5, 0, 8)`` of the image statistics are added (zero
on normal pictures).  Pictures far from the calibration set (RMS Mahalanobis
distance above 2.5; normal pictures are at about 0.6, 99 % below 2.0; glare,
dark and empty pictures at 3 to 270; blurred ones at 1 to 15, mostly below
the threshold) get their colour, type and view evidence replaced by a
hallucinated one, as networks give confident but arbitrary answers on
out-of-distribution input: a soft choice (softmax at temperature 0.3)
among the calibration pictures by the match of fixed random keys with 32
"pixel codes", random projections of the 12 x 16 grey picture whose
contrast is normalised down to a floor.  The answer is arbitrary but a
smooth function of the picture: varied bad pictures get varied answers and
scatter over the normal clusters, slightly off them, while the pictures of
a group get nearly the same answer and stay together; faint pictures (dark
ones) have faint codes, hence a blend of many answers, so dark pictures
resemble each other even when isolated.

Each descriptor set is a fixed, seeded random projection of these 324
standardised features with set-specific weights per feature group, plus
noise, through a ReLU (non-negative, about 58 % zeros, like pooled CNN
features), times a per-picture activation gain: ``contrast^0.12 *
brightness^0.08 * ((min(foreground, 1.5) + 0.1) / 1.1)^0.05`` (each
relative to the calibration mean; logarithm clipped to [-0.8, 0.4]), about
1 (0.92 to 1.10) on normal pictures, 0.6 to 0.75 on dark ones, about 0.8
on empty roads, about 1.09 on glare.  The gain changes only the row norm
(which L2 normalisation removes), as real CNN activations are weaker on
faint or empty pictures and stronger on bright ones.

On a 20,000-row case (seed 0, 1 % outliers: 200, 50 of each kind, 99 of
them in 6 groups of 4 to 29 rows), KMeans on PCA(32) of the L2-normalised
descriptors finds, typically:

``vdc_color`` (128-d)
    mostly colour: 8 clusters recover the colour (ARI about 0.95) and
    nothing of type or view (ARI < 0.01).
``vdc_type`` (512-d)
    mostly body type, then view and silhouette: 6 clusters recover the type
    (ARI about 0.7), not the colour (ARI < 0.01); 18 clusters recover type
    and view together (ARI about 0.55), 3 clusters split by size rather
    than view.
``efficientnet-b7`` (2560-d)
    a mix of colour, type, view, image quality and nuisance (camera,
    lighting, position): clusters follow colour and type at once (ARI
    about 0.2 to 0.4 with each).
``osnet`` (512-d)
    the same mix, weighted towards colour as re-identification features
    are (colour ARI about 0.85).

Outlier ROC-AUC on that case (each kind and each of grouped / isolated
against the normal rows) of LocalOutlierFactor(20), IsolationForest
(``random_state=0``) and the distance to the 20th neighbour (kdist), all
on PCA(64) of the L2-normalised descriptors, and of the raw row norm
(``|log norm - median log norm|``):

=================  =======  =====  =====  =====  ==========  =====  =======  ========
set                score    all    glare  dark   no_vehicle  blur   grouped  isolated
=================  =======  =====  =====  =====  ==========  =====  =======  ========
efficientnet-b7    LOF      0.66   0.56   0.45   0.65        0.99   0.47     0.86
efficientnet-b7    IForest  0.93   0.99   1.00   0.83        0.88   0.94     0.91
efficientnet-b7    kdist    0.95   0.99   0.82   0.98        1.00   0.93     0.96
efficientnet-b7    norm     0.83   0.76   0.96   0.87        0.75   0.89     0.77
osnet              LOF      0.68   0.63   0.45   0.65        0.99   0.48     0.88
osnet              IForest  0.94   0.96   1.00   0.95        0.86   0.97     0.92
osnet              kdist    0.97   0.99   0.92   0.98        0.98   0.97     0.97
osnet              norm     0.84   0.77   0.93   0.85        0.82   0.89     0.80
vdc_color          LOF      0.68   0.73   0.26   0.97        0.76   0.61     0.75
vdc_color          IForest  0.87   0.96   1.00   0.94        0.58   0.97     0.77
vdc_color          kdist    0.90   0.96   1.00   0.96        0.67   0.98     0.81
vdc_color          norm     0.83   0.64   0.99   0.87        0.84   0.86     0.80
vdc_type           LOF      0.62   0.55   0.39   0.59        0.95   0.41     0.82
vdc_type           IForest  0.97   0.99   1.00   0.99        0.91   1.00     0.95
vdc_type           kdist    0.96   0.93   0.99   0.99        0.91   0.96     0.95
vdc_type           norm     0.75   0.71   0.88   0.74        0.67   0.81     0.69
=================  =======  =====  =====  =====  ==========  =====  =======  ========

As on real images, a ratio of local densities (LOF) hides the groups (and
the dark pictures, which all look alike), while the distance to the k-th
neighbour and IsolationForest still find them; the row norm is a signal
on its own (mean norm relative to normal rows: dark 0.44 to 0.60,
no_vehicle 0.61 to 0.66, glare 1.21 to 1.32, blur 0.9 to 1.5).  Within a
group, descriptors are about half as far apart (median L2 distance of the
normalised rows 0.42 to 0.85) as from normal rows (1.0 to 1.2).  The old
demo, with every outlier isolated and answering at random, gave LOF 0.87
to 0.99 overall.

Implementation and memory
-------------------------
Rows are rendered in chunks of 512, each seeded by ``(seed, chunk index)``
(the scene of an outlier group by ``(seed, group)``), on a pool of two
threads; the standardised features and the activation gain (325 float32,
1.3 KB a row) are cached in a temporary file in `out_dir` (deleted at the
end).  The four pickles are then written one after the other by
:func:`streamclust.io.pickle_stream.write_pickled_array` from row blocks
projected from that cache (noise seeded per chunk), so each picture is
rendered once and at most one block of one set, plus a few chunks of
pictures, is in memory: peak resident memory stays around half a gigabyte
whatever `n_rows`.  The output depends only on `seed`, `n_rows`,
`outlier_fraction` and the numpy / Pillow versions, not on `block_rows` or
on thread scheduling.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import math
import os
import pathlib
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamclust.errors import InputError

__all__ = [
    "DESCRIPTOR_DIMS",
    "COLORS",
    "TYPES",
    "VIEWS",
    "OUTLIER_KINDS",
    "MODELS",
    "make_demo_case",
    "load_truth",
]

#: Descriptor sets of the IntelliVision case and their dimensions.
DESCRIPTOR_DIMS: dict[str, int] = {
    "efficientnet-b7": 2560,
    "osnet": 512,
    "vdc_color": 128,
    "vdc_type": 512,
}

#: Planted vehicle colours.
COLORS: tuple[str, ...] = ("white", "black", "silver", "red", "blue", "yellow", "green", "brown")
_COLOR_FREQ = np.array([0.26, 0.21, 0.17, 0.11, 0.10, 0.04, 0.05, 0.06])
_COLOR_RGB = np.array(
    [
        [236, 236, 232],  # white
        [24, 24, 27],  # black
        [150, 153, 158],  # silver
        [165, 25, 30],  # red
        [30, 60, 150],  # blue
        [230, 172, 25],  # yellow
        [34, 112, 58],  # green
        [112, 72, 42],  # brown
    ],
    dtype=np.float32,
)

#: Planted body types.
TYPES: tuple[str, ...] = ("sedan", "suv", "hatchback", "van", "truck", "bus")
_TYPE_FREQ = np.array([0.44, 0.22, 0.13, 0.10, 0.07, 0.04])

#: Planted views.
VIEWS: tuple[str, ...] = ("front", "rear", "side")
_VIEW_FREQ = np.array([0.41, 0.38, 0.21])

#: Kinds of planted outliers.
OUTLIER_KINDS: tuple[str, ...] = ("glare", "dark", "no_vehicle", "blur")

#: Vehicle models by body type.
MODELS: dict[str, tuple[str, ...]] = {
    "sedan": ("Toyota Corolla", "Honda Accord", "Volkswagen Passat", "Audi A4",
              "BMW 3 Series", "Nissan Sylphy", "Buick Regal"),
    "suv": ("Toyota RAV4", "Honda CR-V", "Haval H6", "Volkswagen Tiguan", "Nissan X-Trail"),
    "hatchback": ("Volkswagen Golf", "Ford Fiesta", "Honda Fit", "Kia Rio", "Volkswagen Polo"),
    "van": ("Wuling Hongguang", "Buick GL8", "Ford Transit", "Mercedes-Benz Vito"),
    "truck": ("Foton Aumark", "JAC Junling", "Isuzu Elf", "Dongfeng Captain"),
    "bus": ("Yutong ZK6122", "King Long XMQ6127", "Golden Dragon XML6125"),
}
_MODEL_NAMES: tuple[str, ...] = tuple(m for t in TYPES for m in MODELS[t])
_TYPE_MODEL_START = np.cumsum([0] + [len(MODELS[t]) for t in TYPES])[:-1]
_TYPE_MODEL_COUNT = np.array([len(MODELS[t]) for t in TYPES])


def _model_geometry() -> tuple[np.ndarray, np.ndarray]:
    """Per-model length and height factors (fixed, independent of the seed)."""
    rng = np.random.default_rng(20180301)
    n = len(_MODEL_NAMES)
    return (rng.uniform(0.94, 1.06, n).astype(np.float32),
            rng.uniform(0.96, 1.04, n).astype(np.float32))


_MODEL_LEN, _MODEL_HEIGHT = _model_geometry()

_N_CAMERAS = 174
_H, _W = 48, 64
_CHUNK = 512  # rows rendered (and seeded) together
_START = np.datetime64("2018-03-01T00:00:00", "s")

# --------------------------------------------------------------------------
# Geometry.  Vehicle units: u along the vehicle (front positive for side
# views, lateral for front/rear views), h height above the ground; one unit
# is one pixel at scale 1.  A rectangle is (u0, u1, h0, h1, taper_u0,
# taper_u1): its u0 edge moves in by taper_u0 and its u1 edge by taper_u1
# between h0 and h1 (windscreen slopes).  A wheel is (u, h, r).
# --------------------------------------------------------------------------


def _sym(w, h0, h1, taper=0.0):
    return (-w, w, h0, h1, taper, taper)


def _geometry_spec():
    """Parts of every (type, view): body, glass, dark, lights, plate, wheels."""
    spec = {}
    # (type, view): dict of part lists
    # -- side views (facing +u) --
    spec["sedan", "side"] = dict(
        body=[(-23, 23, 3, 12.5, 0, 1.5), (-12, 9, 12.5, 20.5, 4, 5)],
        glass=[(-10.5, 7.5, 13.5, 19.5, 3.2, 4.2)],
        wheels=[(-15, 4, 4), (15, 4, 4)])
    spec["hatchback", "side"] = dict(
        body=[(-18, 19, 3, 12.5, 0, 1.5), (-18, 8, 12.5, 21.5, 1, 5)],
        glass=[(-16.5, 6.5, 13.5, 20.5, 0.8, 4.2)],
        wheels=[(-12, 4, 4), (12, 4, 4)])
    spec["suv", "side"] = dict(
        body=[(-22, 22, 3, 15.5, 0, 1), (-21.5, 10, 15.5, 25, 1, 5)],
        glass=[(-20, 8.5, 16.5, 24, 0.8, 4.2)],
        wheels=[(-14, 4.5, 4.5), (14, 4.5, 4.5)])
    spec["van", "side"] = dict(
        body=[(-24, 24, 3, 15, 0, 0.5), (-24, 17, 15, 28.5, 0, 6)],
        glass=[(-21, 15.5, 19, 26, 0, 5)],
        wheels=[(-16, 4, 4), (16, 4, 4)])
    spec["truck", "side"] = dict(
        body=[(17, 29, 3, 25, 0, 2), (-29, 15.5, 5.5, 30, 0, 0), (-29, 29, 3, 6, 0, 0)],
        glass=[(20, 28, 16, 23, 0, 1.8)],
        wheels=[(-20, 5, 5), (-9, 5, 5), (22, 5, 5)])
    spec["bus", "side"] = dict(
        body=[(-28, 28, 3, 30, 0, 1)],
        glass=[(-25, 22, 17, 26.5, 0, 0), (23.5, 27, 8, 27, 0, 0.8)],
        wheels=[(-18, 5, 5), (19, 5, 5)])
    # -- front / rear views (symmetric) --
    tyres = lambda w, h=4: [(-w, -w + 4.5, 0, h, 0, 0), (w - 4.5, w, 0, h, 0, 0)]  # noqa: E731
    lights = lambda w, h0, h1, lw=5.5: [(-w + 0.5, -w + 0.5 + lw, h0, h1, 0, 0),  # noqa: E731
                                         (w - 0.5 - lw, w - 0.5, h0, h1, 0, 0)]
    plate = [(-4, 4, 4, 7, 0, 0)]
    for view in ("front", "rear"):
        front = view == "front"
        spec["sedan", view] = dict(  # low and wide, sloping screens
            body=[_sym(16, 3, 12, 1), _sym(13, 12, 19.5, 3)],
            glass=[_sym(11.5, 12.8, 18.8, 2.6) if front else _sym(10.5, 14, 18.5, 2.4)],
            dark=tyres(15.5) + ([_sym(7, 8, 10.5)] if front else []),
            lights=lights(16, 7.5, 10.5), plate=plate)
        spec["hatchback", view] = dict(  # narrow and boxy
            body=[_sym(14, 3, 12.5, 0.5), _sym(12, 12.5, 21.5, 1.5)],
            glass=[_sym(10.5, 13.3, 20.7, 1.3) if front else _sym(9.5, 14.5, 20.5, 1.2)],
            dark=tyres(13.5) + ([_sym(6, 8.5, 11)] if front else []),
            lights=lights(14, 8, 11, 4.5), plate=plate)
        spec["suv", view] = dict(  # wide and high, roof rails
            body=[_sym(17.5, 3, 16, 1), _sym(15.5, 16, 26.5, 1.5)],
            glass=[_sym(14, 16.8, 25.6, 1.3) if front else _sym(12.5, 18, 25.5, 1.2)],
            dark=tyres(17, 5) + [_sym(13, 26.5, 27.5)] + ([_sym(8, 9.5, 13)] if front else []),
            lights=lights(17.5, 10, 13), plate=plate)
        spec["van", view] = dict(  # a tall box
            body=[_sym(16.5, 3, 16, 0.3), _sym(16.3, 16, 30.5, 1.2)],
            glass=[_sym(14.8, 17, 29, 1.0) if front else _sym(12.5, 19.5, 28.5, 0.6)],
            dark=tyres(16) + ([_sym(8, 8.5, 12)] if front else []),
            lights=lights(16.5, 9, 12) if front else lights(16.5, 6, 14, 3),
            plate=plate)
        spec["truck", view] = dict(  # cab in front of a wider, higher cargo box
            body=([_sym(21, 21, 33), _sym(17, 3, 24.5, 0.5)] if front
                  else [_sym(21, 5.5, 33), _sym(17, 3, 6)]),
            glass=[_sym(15, 15, 23, 0.5)] if front else [],
            dark=tyres(16, 5) + ([_sym(9, 7, 12)] if front else [(-0.4, 0.4, 7, 32, 0, 0)]),
            lights=lights(17, 7, 10, 4.5), plate=plate)
        spec["bus", view] = dict(  # very wide and very high
            body=[_sym(22, 3, 34, 0.5)],
            glass=[_sym(20.5, 13, 32.5, 0.3)] if front else [_sym(15, 24, 32)],
            dark=tyres(21, 5),
            lights=lights(22, 6, 10, 5), plate=plate)
    return spec


_PARTS = ("body", "glass", "dark", "lights", "plate")


def _geometry_lists():
    """Per combo (``type * 3 + view``): rectangles of every part, wheels, shadow."""
    spec = _geometry_spec()
    combos = []
    for tname in TYPES:
        for vname in VIEWS:
            parts = spec[tname, vname]
            entry = {p: [tuple(float(v) for v in r) for r in parts.get(p, [])] for p in _PARTS}
            entry["wheels"] = [tuple(float(v) for v in w) for w in parts.get("wheels", [])]
            u0 = min(r[0] for r in parts["body"])
            u1 = max(r[1] for r in parts["body"])
            entry["shadow"] = [(u0 - 1.0, u1 + 1.0, -1.5, 2.5, 0.0, 0.0)]
            combos.append(entry)
    return combos


_GEOMETRY = _geometry_lists()

_GLASS_RGB = np.array([46, 56, 70], np.float32)
_DARK_RGB = np.array([21, 21, 22], np.float32)
_PLATE_RGB = np.array([228, 228, 212], np.float32)
_LIGHT_RGB = np.array([[255, 240, 170], [255, 36, 30], [0, 0, 0]], np.float32)  # by view
_HUB_RGB = np.array([140, 140, 146], np.float32)


# --------------------------------------------------------------------------
# The plan: every row's metadata, drawn up front (a few dozen bytes a row).
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """Per-row metadata of a case; every array has shape ``(n_rows,)``."""

    vehicle: np.ndarray  # 1-based vehicle id
    image: np.ndarray  # 1-based global image id
    color: np.ndarray
    type: np.ndarray
    model: np.ndarray  # index into _MODEL_NAMES
    view: np.ndarray
    camera: np.ndarray  # 0-based; written as c001..c174
    time: np.ndarray  # seconds since 2018-03-01 00:00:00
    outlier: np.ndarray  # index into OUTLIER_KINDS, -1 for normal rows
    group: np.ndarray  # outlier group id, -1 for normal rows and isolated outliers
    cam_tone: np.ndarray  # (n_cameras,) road grey level
    cam_tint: np.ndarray  # (n_cameras, 3) colour cast
    cam_light: np.ndarray  # (n_cameras,) brightness factor
    cam_haze: np.ndarray  # (n_cameras,) top/bottom brightness ratio of the road
    seed: int = 0  # seed of the case (the scenes of the outlier groups derive from it)

    @property
    def n_rows(self) -> int:
        return len(self.vehicle)


def _make_plan(n_rows: int, seed: int, outlier_fraction: float) -> _Plan:
    rng = np.random.default_rng([seed, 0])
    # images per vehicle: 5 + geometric, mean ~10.2 (VeRi-Wild: 416,314 / 40,671)
    n_draw = n_rows // 5 + 2
    counts = np.minimum(4 + rng.geometric(1 / 6.2, n_draw), 40)
    ends = np.cumsum(counts)
    n_veh = int(np.searchsorted(ends, n_rows) + 1)
    counts = counts[:n_veh].copy()
    counts[-1] -= int(ends[n_veh - 1] - n_rows)
    vehicle = np.repeat(np.arange(1, n_veh + 1, dtype=np.int64), counts)
    v_color = rng.choice(len(COLORS), n_veh, p=_COLOR_FREQ)
    v_type = rng.choice(len(TYPES), n_veh, p=_TYPE_FREQ)
    v_model = _TYPE_MODEL_START[v_type] + (rng.random(n_veh) ** 1.5 * _TYPE_MODEL_COUNT[v_type]).astype(np.int64)
    v_day = rng.integers(0, 31, n_veh)
    v_hour = rng.uniform(6.0, 20.5, n_veh)
    idx = vehicle - 1
    hours = np.clip(v_hour[idx] + rng.normal(0, 1.5, n_rows), 5.5, 22.5)
    time = (v_day[idx] * 86400 + hours * 3600).astype(np.int64)
    camera = rng.integers(0, _N_CAMERAS, n_rows)
    view = rng.choice(len(VIEWS), n_rows, p=_VIEW_FREQ)
    outlier, group = _place_outliers(vehicle, camera, view, int(round(outlier_fraction * n_rows)),
                                     np.random.default_rng([seed, 2]))
    crng = np.random.default_rng([seed, 1])
    return _Plan(
        vehicle=vehicle,
        image=np.arange(1, n_rows + 1, dtype=np.int64),
        color=v_color[idx].astype(np.int8),
        type=v_type[idx].astype(np.int8),
        model=v_model[idx].astype(np.int16),
        view=view.astype(np.int8),
        camera=camera.astype(np.int16),
        time=time,
        outlier=outlier,
        group=group,
        cam_tone=crng.uniform(90, 100, _N_CAMERAS).astype(np.float32),
        cam_tint=crng.uniform(0.97, 1.03, (_N_CAMERAS, 3)).astype(np.float32),
        cam_light=crng.uniform(0.9, 1.1, _N_CAMERAS).astype(np.float32),
        cam_haze=crng.uniform(1.04, 1.3, _N_CAMERAS).astype(np.float32),
        seed=seed,
    )


#: Kinds of outliers that come in groups (similar bad pictures: a camera
#: dazzled or at night for a while, the same empty road shot again and
#: again), the share of their rows in groups, the smallest group and how the
#: number of groups grows with the grouped rows of a kind.
_GROUPED_KINDS = (0, 1, 2)  # glare, dark, no_vehicle
_GROUPED_SHARE = 2 / 3
_MIN_GROUP = 3
_GROUPS_PER_SQRT = 0.3
_MAX_SHOTS = 10  # longest run of consecutive shots of one vehicle in a group


def _place_outliers(vehicle: np.ndarray, camera: np.ndarray, view: np.ndarray, n_out: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Outlier kind (-1 for normal rows) and group (-1 if none) of every row.

    The kinds get equal shares of `n_out` (one more for some).  Of the glare,
    dark and no_vehicle rows, :data:`_GROUPED_SHARE` form groups of similar
    pictures: ``max(1, round(0.3 * sqrt(m)))`` groups for `m` grouped rows of
    a kind, of sizes :data:`_MIN_GROUP` plus a log-normally weighted share of
    the rest.  A group is taken as runs of 1 to 10 consecutive shots of one
    vehicle, all seen by the group's camera from the group's view (`camera`
    and `view` are changed in place for its rows).  The other outliers are
    rows drawn at random.
    """
    n_rows = len(vehicle)
    outlier = np.full(n_rows, -1, np.int8)
    group = np.full(n_rows, -1, np.int32)
    if not n_out:
        return outlier, group
    n_kinds = len(OUTLIER_KINDS)
    counts = np.full(n_kinds, n_out // n_kinds)
    counts[rng.permutation(n_kinds)[:n_out % n_kinds]] += 1
    # first and last row of the vehicle of every row (rows are sorted by vehicle)
    starts = np.flatnonzero(np.r_[True, vehicle[1:] != vehicle[:-1]])
    veh_end = np.r_[starts[1:], n_rows]  # one past the last row, per vehicle
    veh_of_row = np.cumsum(np.r_[True, vehicle[1:] != vehicle[:-1]]) - 1
    taken = np.zeros(n_rows, bool)
    g = 0
    for kind in _GROUPED_KINDS:
        m = int(math.floor(_GROUPED_SHARE * counts[kind]))
        if m < _MIN_GROUP:
            continue
        n_groups = min(max(1, int(round(_GROUPS_PER_SQRT * math.sqrt(m)))), m // _MIN_GROUP)
        weights = rng.lognormal(0.0, 0.8, n_groups)
        sizes = _MIN_GROUP + rng.multinomial(m - _MIN_GROUP * n_groups, weights / weights.sum())
        for size in sizes.tolist():
            cam = int(rng.integers(0, _N_CAMERAS))
            vw = int(rng.choice(len(VIEWS), p=_VIEW_FREQ))
            left = size
            while left:
                run = min(int(rng.geometric(0.3)), _MAX_SHOTS, left)
                start = int(rng.integers(0, n_rows))
                while taken[start]:
                    start = int(rng.integers(0, n_rows))
                stop = min(start + run, int(veh_end[veh_of_row[start]]))
                rows = np.arange(start, stop)
                rows = rows[: np.argmax(np.r_[taken[rows], True])]  # up to the next taken row
                taken[rows] = True
                outlier[rows] = kind
                group[rows] = g
                camera[rows] = cam
                view[rows] = vw
                left -= len(rows)
            g += 1
        counts[kind] -= m
    rest = np.flatnonzero(~taken)
    where = rest[rng.choice(len(rest), int(counts.sum()), replace=False)]
    outlier[where] = rng.permutation(np.repeat(np.arange(n_kinds, dtype=np.int8), counts))
    return outlier, group


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def _rect_rows(u, h, rect, su, sh):
    """Soft coverage of one rectangle, on the rows it can touch.

    ``u``: (k, 1, W) and ``h``: (k, H, 1) vehicle coordinates of the pixels;
    ``su``, ``sh``: (k, 1, 1) pixels per unit.  Returns ``(rows, alpha)``
    with ``alpha`` of shape (k, len(rows), W), or None if it touches no pixel.
    """
    u0, u1, h0, h1, t0, t1 = rect
    ay = np.minimum(h - h0, h1 - h)
    ay *= sh
    ay += 0.5
    np.clip(ay, 0.0, 1.0, out=ay)
    hit = np.flatnonzero(ay.any(axis=(0, 2)))
    if not len(hit):
        return None
    rows = slice(int(hit[0]), int(hit[-1]) + 1)
    ay = ay[:, rows]
    if t0 or t1:
        t = np.clip((h[:, rows] - h0) / (h1 - h0), 0.0, 1.0)
        ax = np.minimum(u - (u0 + t0 * t), (u1 - t1 * t) - u)
    else:
        ax = np.minimum(u - u0, u1 - u)
    ax *= su
    ax += 0.5
    np.clip(ax, 0.0, 1.0, out=ax)
    return rows, ax * ay


def _wheel_rows(u, h, wheel, su, shrink=1.0):
    """Soft coverage of one wheel (disc), like :func:`_rect_rows`."""
    wu, wh, r = wheel
    r = r * shrink
    near = np.flatnonzero((np.abs(h - wh) * su < r * su + 1.0).any(axis=(0, 2)))
    if not len(near):
        return None
    rows = slice(int(near[0]), int(near[-1]) + 1)
    d = np.sqrt((u - wu) ** 2 + (h[:, rows] - wh) ** 2)
    a = (r - d) * su + 0.5
    return rows, np.clip(a, 0.0, 1.0, out=a)


def _vehicle_layers(combo, cx, gy, scale, direction, len_f, height_f, active=None):
    """Alpha maps (N, H, W) of the parts of the vehicles described (arrays (N,)).

    Rows where `active` is False get no vehicle.  Returns a dict with one map
    per part of :data:`_PARTS`, plus ``tyre``, ``hub`` and ``shadow``.
    """
    n = len(combo)
    names = _PARTS + ("tyre", "hub", "shadow")
    layers = {p: np.zeros((n, _H, _W), np.float32) for p in names}
    xs = np.arange(_W, dtype=np.float32)
    ys = np.arange(_H, dtype=np.float32)
    su_all = (scale * len_f).astype(np.float32)
    sh_all = (scale * height_f).astype(np.float32)
    if active is None:
        active = np.ones(n, bool)
    for c in np.unique(combo[active]):
        idx = np.flatnonzero((combo == c) & active)
        geo = _GEOMETRY[int(c)]
        su = su_all[idx, None, None]
        sh = sh_all[idx, None, None]
        u = ((xs[None, :] - cx[idx, None]) * direction[idx, None])[:, None, :] / su  # (k, 1, W)
        h = (gy[idx, None] - ys[None, :])[:, :, None] / sh  # (k, H, 1)
        for name in names:
            if name == "tyre":
                pieces = [_wheel_rows(u, h, w, su) for w in geo["wheels"]]
            elif name == "hub":
                pieces = [_wheel_rows(u, h, w, su, 0.45) for w in geo["wheels"]]
            else:
                pieces = [_rect_rows(u, h, r, su, sh) for r in geo[name]]
            pieces = [p for p in pieces if p is not None]
            if not pieces:
                continue
            local = np.zeros((len(idx), _H, _W), np.float32)
            for rows, alpha in pieces:
                np.maximum(local[:, rows], alpha, out=local[:, rows])
            layers[name][idx] = local
    h_rows = (gy[:, None] - ys[None, :]) / sh_all[:, None]
    layers["h"] = h_rows.astype(np.float32)  # (N, H) height of each row in vehicle units
    return layers


def _composite(img, alpha, color):
    """Paint `color` over planar images in place: ``img += alpha * (color - img)``.

    ``img``: (3, N, H, W); ``alpha``: (N, H, W); ``color``: a sequence of three
    arrays broadcastable to (N, H, W) (or scalars), one per channel.
    """
    for c in range(3):
        diff = color[c] - img[c]
        diff *= alpha
        img[c] += diff


def _noise(rng: np.random.Generator, shape: tuple[int, ...], scale) -> np.ndarray:
    """Zero-mean, unit-variance noise of `shape` times `scale`, float32.

    Triangular (the sum of two uniform bytes), several times faster to draw
    than normal noise and just as good for sensor or descriptor noise.
    """
    size = math.prod(shape)
    pairs = np.frombuffer(rng.bytes(2 * size), np.uint8).reshape(2, size)
    out = pairs[0].astype(np.float32)
    out += pairs[1]
    out -= 255.0
    out *= np.float32(1.0 / 104.51)  # std of the sum of two uniform bytes
    out = out.reshape(shape)
    out *= scale
    return out


def _chunk_rng(seed: int, stream: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, chunk])


def _render(plan: _Plan, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Render rows ``lo:hi`` of `plan`; returns uint8 images of shape (N, 48, 64, 3)."""
    n = hi - lo
    sl = slice(lo, hi)
    color, vtype, view = plan.color[sl], plan.type[sl], plan.view[sl]
    model, camera, outlier = plan.model[sl], plan.camera[sl], plan.outlier[sl]
    hours = (plan.time[sl] % 86400) / 3600.0
    # per-image draws (always the same number, whatever the row is)
    jitter = rng.uniform(-1.0, 1.0, (n, 2)).astype(np.float32)
    scale = rng.uniform(0.9, 1.06, n).astype(np.float32)
    direction = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    col_jit = (rng.normal(0.0, 0.02, (n, 3)) + rng.normal(0.0, 0.03, (n, 1))).astype(np.float32)
    shade_jit = rng.normal(1.0, 0.05, n).astype(np.float32)
    light_jit = rng.uniform(0.95, 1.05, n).astype(np.float32)
    noise_sd = rng.uniform(2.5, 5.5, n).astype(np.float32)
    texture = rng.uniform(0.0, 4.0, n).astype(np.float32)
    coarse = rng.standard_normal((n, _H // 4 + 1, _W // 4 + 1), dtype=np.float32)
    # rows of an outlier group: the group's scene, varied a little per row
    group = plan.group[sl]
    scenes = {}
    for g in np.unique(group[group >= 0]).tolist():
        sc = scenes[g] = _group_scene(plan.seed, g, int(outlier[np.argmax(group == g)]))
        rows = group == g
        jitter[rows] = sc.jitter + 0.15 * jitter[rows]
        scale[rows] = sc.scale + 0.1 * (scale[rows] - 0.98)
        direction[rows] = sc.direction
        light_jit[rows] = sc.light + 0.1 * (light_jit[rows] - 1.0)
        noise_sd[rows] = sc.noise_sd + 0.1 * (noise_sd[rows] - 4.0)
        texture[rows] = sc.texture
        coarse[rows] = sc.road + 0.25 * coarse[rows]

    direction = np.where(view == 2, direction, 1.0).astype(np.float32)
    cx = 32.0 + 3.0 * jitter[:, 0]
    gy = 40.0 + 1.5 * jitter[:, 1]
    combo = vtype.astype(np.int64) * len(VIEWS) + view
    layers = _vehicle_layers(combo, cx, gy, scale, direction,
                             _MODEL_LEN[model], _MODEL_HEIGHT[model], active=outlier != 2)

    # background: road with a vertical haze gradient and a soft texture
    tone = plan.cam_tone[camera]
    haze = plan.cam_haze[camera]
    rows = np.arange(_H, dtype=np.float32) / (_H - 1)
    grad = haze[:, None] + (1.0 - haze[:, None]) * rows[None, :]  # (N, H)
    coarse *= texture[:, None, None]
    road = _upsample4(coarse) + (tone[:, None] * grad)[:, :, None]  # (N, H, W)
    img = np.empty((3, n, _H, _W), np.float32)
    img[:] = road

    # vehicle
    img *= 1.0 - 0.45 * layers["shadow"]
    hrow = layers["h"]
    shade = (0.92 + 0.14 * np.clip(hrow / 28.0, 0.0, 1.0)) * shade_jit[:, None]  # (N, H)
    body_rgb = _COLOR_RGB[color] * (1.0 + col_jit)  # (N, 3)
    _composite(img, layers["body"],
               [body_rgb[:, c, None, None] * shade[:, :, None] for c in range(3)])
    refl = (0.85 + 0.35 * np.clip((hrow - 14.0) / 14.0, 0.0, 1.0))[:, :, None]
    _composite(img, layers["glass"], [_GLASS_RGB[c] * refl for c in range(3)])
    _composite(img, np.maximum(layers["dark"], layers["tyre"]), _DARK_RGB)
    light_rgb = _LIGHT_RGB[view]
    _composite(img, layers["lights"], [light_rgb[:, c, None, None] for c in range(3)])
    _composite(img, layers["plate"], _PLATE_RGB)
    _composite(img, layers["hub"], _HUB_RGB)

    # lighting: camera brightness and tint, time of day
    day = 0.78 + 0.22 * np.clip(np.minimum(hours - 6.0, 21.0 - hours) / 3.0, 0.0, 1.0)
    light = (plan.cam_light[camera] * day.astype(np.float32) * light_jit)[:, None] * plan.cam_tint[camera]
    img *= light.T[:, :, None, None]
    out = np.ascontiguousarray(img.transpose(1, 2, 3, 0))  # (N, H, W, 3)

    # outliers
    for i in np.flatnonzero(outlier >= 0):
        kind = int(outlier[i])
        if group[i] >= 0:
            params = _vary(kind, scenes[int(group[i])].params, rng)
        else:
            params = _OUTLIER_PARAMS[kind](rng)
        _OUTLIER_TRANSFORMS[kind](out[i], params)
    # sensor noise
    out += _noise(rng, out.shape, noise_sd[:, None, None, None])
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def _upsample4(a: np.ndarray) -> np.ndarray:
    """Bilinear 4x upsampling of (N, H/4 + 1, W/4 + 1) to (N, H, W)."""
    t = (np.arange(4, dtype=np.float32) + 0.5) / 4.0
    rows = a[:, :-1, None, :] * (1 - t)[None, None, :, None] + a[:, 1:, None, :] * t[None, None, :, None]
    rows = rows.reshape(len(a), _H, -1)
    out = rows[:, :, :-1, None] * (1 - t) + rows[:, :, 1:, None] * t
    return out.reshape(len(a), _H, _W)


def _glare_params(rng: np.random.Generator) -> dict:
    return dict(cy=rng.uniform(4, 34), cx=rng.uniform(8, 56), sigma=rng.uniform(7, 16),
                amp=rng.uniform(1.0, 2.0), streak=bool(rng.random() < 0.5),
                angle=rng.uniform(0, np.pi), wash=rng.uniform(0.3, 0.6))


def _glare(im: np.ndarray, p: dict) -> None:
    """A large saturated blob, sometimes with a lens streak, on a washed-out picture."""
    ys, xs = np.mgrid[0:_H, 0:_W].astype(np.float32)
    cy, cx = p["cy"], p["cx"]
    blob = np.clip(p["amp"] * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * p["sigma"] ** 2)), 0, 1)
    if p["streak"]:
        dist = np.abs((xs - cx) * np.sin(p["angle"]) - (ys - cy) * np.cos(p["angle"]))
        blob = np.maximum(blob, np.clip(1.5 - dist / 1.5, 0, 1) * 0.8)
    im *= 1.0 - p["wash"]
    im += 250.0 * p["wash"]
    im += (265.0 - im) * blob[..., None]


def _dark_params(rng: np.random.Generator) -> dict:
    return dict(factor=rng.uniform(0.05, 0.15), offset=rng.uniform(0.0, 4.0))


def _dark(im: np.ndarray, p: dict) -> None:
    """5-15 % of the normal brightness (the sensor noise comes on top)."""
    im *= p["factor"]
    im += p["offset"]


def _no_vehicle_params(rng: np.random.Generator) -> dict:
    items = []
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(0, 3))
        if kind == 0:  # lane marking: a slanted white dash
            items.append((0, dict(x=rng.uniform(5, 59), y=rng.uniform(26, 46), slope=rng.uniform(-1.5, 1.5),
                                  half=rng.uniform(3, 8))))
        elif kind == 1:  # a pole
            items.append((1, dict(x=rng.uniform(3, 61), width=rng.uniform(0.8, 2.0), top=rng.uniform(38, 46),
                                  grey=rng.uniform(60, 150))))
        else:  # a passer-by: dark body and head
            items.append((2, dict(x=rng.uniform(8, 56), y=rng.uniform(30, 42), rgb=rng.uniform(20, 90, 3))))
    return dict(items=items)


def _no_vehicle(im: np.ndarray, p: dict) -> None:
    """Add some clutter to an empty road (the vehicle was not drawn)."""
    ys, xs = np.mgrid[0:_H, 0:_W].astype(np.float32)
    for kind, q in p["items"]:
        if kind == 0:
            inside = (np.abs(xs - q["x"] - q["slope"] * (ys - q["y"])) < 1.5) & (np.abs(ys - q["y"]) < q["half"])
            im[inside] = im[inside] * 0.2 + 0.8 * 215.0
        elif kind == 1:
            inside = (np.abs(xs - q["x"]) < q["width"]) & (ys < q["top"])
            im[inside] = q["grey"]
        else:
            body = ((xs - q["x"]) / 2.5) ** 2 + ((ys - (q["y"] - 7)) / 7.0) ** 2 < 1
            head = (xs - q["x"]) ** 2 + (ys - (q["y"] - 16)) ** 2 < 4
            im[body | head] = q["rgb"]


def _blur_params(rng: np.random.Generator) -> dict:
    if rng.random() < 0.5:  # defocus
        return dict(sigma=rng.uniform(3.0, 4.5))
    return dict(size=int(rng.integers(13, 22)), angle=rng.uniform(-25, 25))  # motion


def _blur(im: np.ndarray, p: dict) -> None:
    """Strong defocus or motion blur."""
    from scipy import ndimage

    if "sigma" in p:
        for c in range(3):
            im[..., c] = ndimage.gaussian_filter(im[..., c], p["sigma"], mode="nearest")
    else:
        size = p["size"]
        kernel = np.zeros((size, size), np.float32)
        kernel[size // 2, :] = 1.0
        kernel = ndimage.rotate(kernel, p["angle"], reshape=False, order=1)
        kernel /= kernel.sum()
        for c in range(3):
            im[..., c] = ndimage.convolve(im[..., c], kernel, mode="nearest")


_OUTLIER_PARAMS: tuple[Callable[[np.random.Generator], dict], ...] = (
    _glare_params, _dark_params, _no_vehicle_params, _blur_params)
_OUTLIER_TRANSFORMS: tuple[Callable[[np.ndarray, dict], None], ...] = (
    _glare, _dark, _no_vehicle, _blur)


def _vary(kind: int, p: dict, rng: np.random.Generator) -> dict:
    """The outlier parameters `p` of a group's scene, varied a little for one of its pictures."""
    if kind == 0:
        return dict(p, cy=p["cy"] + rng.normal(0, 1.0), cx=p["cx"] + rng.normal(0, 1.0),
                    sigma=p["sigma"] * (1 + rng.normal(0, 0.05)), amp=p["amp"] * (1 + rng.normal(0, 0.05)),
                    angle=p["angle"] + rng.normal(0, 0.05),
                    wash=float(np.clip(p["wash"] + rng.normal(0, 0.03), 0.2, 0.7)))
    if kind == 1:
        return dict(factor=p["factor"] * math.exp(rng.normal(0, 0.1)),
                    offset=max(0.0, p["offset"] + rng.normal(0, 0.3)))
    if kind == 2:
        items = []
        for k, q in p["items"]:
            q = dict(q, x=q["x"] + rng.normal(0, 0.5))
            if "y" in q:
                q["y"] += rng.normal(0, 0.5)
            if "grey" in q:
                q["grey"] *= 1 + rng.normal(0, 0.03)
            if "rgb" in q:
                q["rgb"] = q["rgb"] * (1 + rng.normal(0, 0.03))
            items.append((k, q))
        return dict(items=items)
    if "sigma" in p:
        return dict(sigma=p["sigma"] * (1 + rng.normal(0, 0.05)))
    return dict(p, angle=p["angle"] + rng.normal(0, 2.0))


@dataclass(frozen=True)
class _Scene:
    """What the pictures of one outlier group share (besides camera and view)."""

    jitter: np.ndarray  # (2,) vehicle position
    scale: float
    direction: float
    light: float
    noise_sd: float
    texture: float
    road: np.ndarray  # (H / 4 + 1, W / 4 + 1) road texture
    params: dict  # parameters of the outlier transform


@functools.lru_cache(maxsize=512)
def _group_scene(seed: int, g: int, kind: int) -> _Scene:
    """The scene of outlier group `g` (of `kind`), seeded by ``(seed, g)`` alone."""
    rng = np.random.default_rng([seed, 3, g])
    return _Scene(
        jitter=rng.uniform(-1.0, 1.0, 2).astype(np.float32),
        scale=float(rng.uniform(0.9, 1.06)),
        direction=-1.0 if rng.random() < 0.5 else 1.0,
        light=float(rng.uniform(0.95, 1.05)),
        noise_sd=float(rng.uniform(2.5, 5.5)),
        texture=float(rng.uniform(0.0, 4.0)),
        road=rng.standard_normal((_H // 4 + 1, _W // 4 + 1), dtype=np.float32),
        params=_OUTLIER_PARAMS[kind](rng),
    )


# --------------------------------------------------------------------------
# Features computed from the pixels
# --------------------------------------------------------------------------
_PROTOTYPES = np.concatenate(
    [_COLOR_RGB, _GLASS_RGB[None], np.array([[95, 95, 95]], np.float32)])  # 10 x 3
_CENTRAL = (slice(18, 42, 2), slice(12, 52, 2))  # every other pixel of the central region
#: Feature groups computed from the pixels (``_raw_features``); the last 32
#: raw values are pixel codes, used only to perturb the semantic groups of
#: atypical images (see ``_standard_features``).
_GROUPS = ("color_hist", "color_stats", "type", "view", "mask", "edges", "image")
#: Groups of the standardised features, as fed to the projections.
_NET_GROUPS = _GROUPS + ("quality",)
#: Groups whose values atypical images get scrambled.
_SCRAMBLED = ("color_hist", "color_stats", "type", "view")
_N_PIXEL_CODES = 32


def _downsample(a: np.ndarray, f: int) -> np.ndarray:
    """Average-pool (N, H, W) by `f` along both image axes: (N, H / f, W / f)."""
    rows = a[:, 0::f]
    for i in range(1, f):
        rows = rows + a[:, i::f]
    out = rows[:, :, 0::f]
    for i in range(1, f):
        out = out + rows[:, :, i::f]
    out *= 1.0 / (f * f)
    return out


def _background(x: np.ndarray) -> np.ndarray:
    """Background of planar images (3, N, H, W): (3, N, H), linear in the row,
    estimated from the top and bottom three rows."""
    top = x[:, :, 0:3].mean(axis=(2, 3))
    bottom = x[:, :, _H - 3:].mean(axis=(2, 3))
    t = np.clip((np.arange(_H, dtype=np.float32) - 1.0) / (_H - 3.0), 0.0, 1.0)
    return top[:, :, None] + (bottom - top)[:, :, None] * t


def _foreground(x: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Soft foreground mask (N, H, W): summed channel difference to the
    background, relative to the background level."""
    level = bg.mean(axis=(0, 2)) + 1.0  # (N,)
    diff = np.abs(x[0] - bg[0][:, :, None])
    diff += np.abs(x[1] - bg[1][:, :, None])
    diff += np.abs(x[2] - bg[2][:, :, None])
    diff /= level[:, None, None]
    diff -= 0.35
    diff /= 0.3
    return np.clip(diff, 0.0, 1.0, out=diff)


def _align(m: np.ndarray) -> np.ndarray:
    """Shift masks (N, H, W) so that their bottom row is 41 and their centroid column 31.5."""
    n = len(m)
    occupied = m.sum(axis=2) > 2.0  # (N, H)
    any_rows = occupied.any(axis=1)
    bottom = np.where(any_rows, _H - 1 - np.argmax(occupied[:, ::-1], axis=1), 41)
    cols = m.sum(axis=1)  # (N, W)
    total = cols.sum(axis=1)
    centre = np.where(total > 1.0, (cols * np.arange(_W)).sum(axis=1) / np.maximum(total, 1e-6), 31.5)
    dy = 41 - bottom
    dx = np.rint(31.5 - centre).astype(np.int64)
    rows = np.arange(_H)[None, :] - dy[:, None]
    cols_i = np.arange(_W)[None, :] - dx[:, None]
    valid = ((rows >= 0) & (rows < _H))[:, :, None] & ((cols_i >= 0) & (cols_i < _W))[:, None, :]
    out = m[np.arange(n)[:, None, None], np.clip(rows, 0, _H - 1)[:, :, None],
            np.clip(cols_i, 0, _W - 1)[:, None, :]]
    return out * valid


@functools.cache
def _templates() -> np.ndarray:
    """Aligned canonical silhouettes (shadow included) of every type seen from
    the front, the rear, the left and the right, at three scales: shape
    (len(TYPES) * 4 * 3, H * W), ordered type, view, scale."""
    combos, dirs, scales = [], [], []
    for t in range(len(TYPES)):
        for v, d in ((0, 1.0), (1, 1.0), (2, -1.0), (2, 1.0)):
            for sc in _TEMPLATE_SCALES:
                combos.append(t * len(VIEWS) + v)
                dirs.append(d)
                scales.append(sc)
    n = len(combos)
    ones = np.ones(n, np.float32)
    layers = _vehicle_layers(np.array(combos), 32.0 * ones, 40.0 * ones, np.array(scales, np.float32),
                             np.array(dirs, np.float32), ones, ones)
    union = np.maximum.reduce([layers[p] for p in _PARTS + ("tyre", "shadow")])
    return _align(union).reshape(n, -1).astype(np.float32)


_TEMPLATE_SCALES = (0.92, 0.98, 1.04)


def _raw_features(images: np.ndarray) -> np.ndarray:
    """Pixel features of uint8 images (N, H, W, 3); returns (N, F) float32."""
    n = len(images)
    x = images.transpose(3, 0, 1, 2).astype(np.float32)  # planar (3, N, H, W)
    bg = _background(x)  # (3, N, H)
    m = _foreground(x, bg)  # (N, H, W)
    level = bg.mean(axis=2)  # (3, N)
    wb = 95.0 / (bg[:, :, -1] + 1.0)  # white balance on the road at the bottom
    # colour of the central foreground, white-balanced against the road
    xc = x[:, :, _CENTRAL[0], _CENTRAL[1]].reshape(3, n, -1) * wb[:, :, None]  # (3, N, P)
    mc = m[:, _CENTRAL[0], _CENTRAL[1]].reshape(n, -1)  # (N, P)
    wsum = mc.sum(axis=1) + 1.0
    logits = np.empty((len(_PROTOTYPES),) + mc.shape, np.float32)  # (K, N, P)
    for k, proto in enumerate(_PROTOTYPES):
        d2 = (xc[0] - proto[0]) ** 2
        d2 += (xc[1] - proto[1]) ** 2
        d2 += (xc[2] - proto[2]) ** 2
        logits[k] = d2
    glass_frac = ((logits[8] < 30.0**2) * mc).sum(axis=1) / wsum
    logits *= -1.0 / (2 * 28.0**2)
    logits -= logits.max(axis=0)
    p = np.exp(logits, out=logits)
    p /= p.sum(axis=0)
    hist = ((p * mc).sum(axis=2) / wsum).T  # (N, K)
    mean_rgb = (xc * mc).sum(axis=2).T / wsum[:, None]  # (N, 3)
    bright = mean_rgb.mean(axis=1, keepdims=True)
    chroma = (mean_rgb - bright) / (bright + 20.0)
    spread = np.maximum(np.maximum(xc[0], xc[1]), xc[2]) - np.minimum(np.minimum(xc[0], xc[1]), xc[2])
    sat = (spread * mc).sum(axis=1, keepdims=True) / wsum[:, None]
    color_stats = np.concatenate([mean_rgb / 100.0, chroma, bright / 100.0, sat / 100.0], axis=1)

    # silhouette against canonical shapes
    ma = _align(m).reshape(n, -1)
    tpl = _templates()
    inter = ma @ tpl.T
    iou = inter / (ma.sum(axis=1)[:, None] + tpl.sum(axis=1)[None, :] - inter + 1.0)
    iou = iou.reshape(n, len(TYPES), 4, len(_TEMPLATE_SCALES)).max(axis=3)
    type_raw = iou.max(axis=2)
    z = type_raw / 0.03
    z -= z.max(axis=1, keepdims=True)
    type_soft = np.exp(z)
    type_soft /= type_soft.sum(axis=1, keepdims=True)
    side = iou[:, :, 2:].max(axis=(1, 2))
    frontal = iou[:, :, :2].max(axis=(1, 2))
    r, g, b = xc
    red_light = ((r > 196) & (g < 0.3 * r) & (b < 0.3 * r)).mean(axis=1)
    head_light = ((r > 190) & (g > 0.85 * r) & (b < 0.85 * r)).mean(axis=1)
    view = np.stack([side, frontal, side - frontal, 20 * red_light, 20 * head_light, glass_frac], axis=1)

    mask_grid = _downsample(m, 4).reshape(n, -1)

    # edges and image statistics
    grey = (x[0] + x[1] + x[2]) / 3.0  # (N, H, W)
    g2 = _downsample(grey, 2)  # (N, 24, 32)
    gx = np.zeros_like(g2)
    gy = np.zeros_like(g2)
    gx[:, :, :-1] = np.diff(g2, axis=2)
    gy[:, :-1, :] = np.diff(g2, axis=1)
    mag = np.sqrt(gx**2 + gy**2)
    gstd = grey.std(axis=(1, 2))
    norm = gstd + 5.0
    edges = _downsample(mag, 4).reshape(n, -1) / norm[:, None]
    fine = np.abs(grey[:, 1:-1, 1:-1] - _box3(grey)).mean(axis=(1, 2))
    lo_ch = np.minimum(np.minimum(x[0], x[1]), x[2])
    hi_ch = np.maximum(np.maximum(x[0], x[1]), x[2])
    top_mag = np.partition(mag.reshape(n, -1), -20, axis=1)[:, -20:].mean(axis=1)
    g4 = _downsample(g2, 2)  # (N, 12, 16)
    coarse = np.zeros_like(g4)
    coarse[:, :, :-1] = np.abs(np.diff(g4, axis=2))
    coarse[:, :-1, :] = np.maximum(coarse[:, :-1, :], np.abs(np.diff(g4, axis=1)))
    top_coarse = np.partition(coarse.reshape(n, -1), -5, axis=1)[:, -5:].mean(axis=1)
    lvl = level.mean(axis=0)
    image = np.stack([
        grey.mean(axis=(1, 2)) / 100.0,
        gstd / 50.0,
        (lo_ch >= 248).mean(axis=(1, 2)),
        (grey <= 20).mean(axis=(1, 2)),
        mag.mean(axis=(1, 2)) / norm,
        (mag > 0.5 * norm[:, None, None]).mean(axis=(1, 2)),
        top_mag / norm,
        fine / norm,
        (hi_ch - lo_ch).mean(axis=(1, 2)) / 50.0,
        lvl / 100.0,
        (bg[:, :, 0].mean(axis=0) - bg[:, :, -1].mean(axis=0)) / (lvl + 1.0),
        level[0] / (level[1] + 1.0),
        level[2] / (level[1] + 1.0),
        m.mean(axis=(1, 2)),
        m[:, 12:44, 12:52].sum(axis=(1, 2)) / (m.sum(axis=(1, 2)) + 1.0),
        top_mag / (top_coarse + 3.0),  # edge sharpness, independent of contrast
    ], axis=1)
    # unspecific responses: a fixed random projection of the coarse picture,
    # contrast-normalised down to a floor (so that sensor noise hardly moves
    # them and a faint picture gives faint codes; only images far from normal
    # ones express them, see _standard_features)
    detail = g4 - g4.mean(axis=2, keepdims=True)  # without the road's vertical gradient
    flat = detail.reshape(n, -1)
    flat = flat / (flat.std(axis=1, keepdims=True) + _CODE_FLOOR)
    codes = flat @ _pixel_projection()
    groups = [hist, color_stats, np.concatenate([type_soft, type_raw * 5], axis=1), view,
              mask_grid, edges, image, codes]  # _GROUPS, then the pixel codes
    return np.concatenate(groups, axis=1).astype(np.float32)


def _box3(a: np.ndarray) -> np.ndarray:
    """3 x 3 box mean of the interior of (N, H, W)."""
    s = a[:, :-2] + a[:, 1:-1] + a[:, 2:]
    return (s[:, :, :-2] + s[:, :, 1:-1] + s[:, :, 2:]) / 9.0


def _group_sizes() -> dict[str, int]:
    """Number of features of every group of :data:`_NET_GROUPS`."""
    return {"color_hist": len(_PROTOTYPES), "color_stats": 8, "type": 2 * len(TYPES), "view": 6,
            "mask": (_H // 4) * (_W // 4), "edges": (_H // 8) * (_W // 8), "image": 16,
            "quality": 32}


def _group_slices() -> dict[str, slice]:
    sizes = _group_sizes()
    ends = np.cumsum([sizes[g] for g in _NET_GROUPS])
    return {g: slice(int(e - sizes[g]), int(e)) for g, e in zip(_NET_GROUPS, ends)}


_SLICES = _group_slices()
_N_SEMANTIC = _SLICES["image"].stop  # semantic features, all groups but "quality"
_N_FEATURES = _SLICES["quality"].stop  # features fed to the projections
_N_STORED = _N_FEATURES + 1  # values cached per row: the features, then the activation gain
_N_BANK = 4096  # calibration pictures
_N_SCRAMBLED = _SLICES[_SCRAMBLED[-1]].stop


#: Contrast (standard deviation of the 12 x 16 grey picture, normal pictures
#: 12 to 29) below which the pixel codes fade.
_CODE_FLOOR = 3.0


@functools.cache
def _pixel_projection() -> np.ndarray:
    """Fixed random projection (12 * 16, _N_PIXEL_CODES) of a 12 x 16 picture."""
    rng = np.random.default_rng(0x5EED)
    size = (_H // 4) * (_W // 4)
    return (rng.standard_normal((size, _N_PIXEL_CODES)) / math.sqrt(size)).astype(np.float32)


@functools.cache
def _hallucination_keys() -> np.ndarray:
    """Fixed random keys (_N_PIXEL_CODES, len(bank)) matched against the pixel codes."""
    rng = np.random.default_rng(0x4A11)
    return (rng.standard_normal((_N_PIXEL_CODES, _N_BANK)) / math.sqrt(_N_PIXEL_CODES)).astype(np.float32)


@functools.cache
def _scramble_matrix() -> np.ndarray:
    """Fixed map (_N_PIXEL_CODES, _N_SCRAMBLED) from pixel codes to scrambling offsets."""
    rng = np.random.default_rng(0x5C4A)
    return (rng.standard_normal((_N_PIXEL_CODES, _N_SCRAMBLED)) / math.sqrt(_N_PIXEL_CODES)).astype(np.float32)


@dataclass(frozen=True)
class _Calibration:
    """Statistics of the raw features over a fixed set of normal images."""

    mean: np.ndarray  # (F_raw,)
    std: np.ndarray  # (F_raw,)
    centre: np.ndarray  # (F_semantic,) mean of the standardised semantic features
    whiten: np.ndarray  # (F_semantic, F_semantic) Mahalanobis whitening
    bank: np.ndarray  # (4096, _N_SCRAMBLED) squashed colour/type/view features of normal images


@functools.cache
def _calibration() -> _Calibration:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _calibrate()


def _calibrate() -> _Calibration:
    n = _N_BANK
    plan = _make_plan(n, 0xCA11B, 0.0)
    feats = []
    for c in range(n // _CHUNK):
        lo = c * _CHUNK
        feats.append(_raw_features(_render(plan, lo, lo + _CHUNK, _chunk_rng(0xCA11B, 1, c))))
    f = np.concatenate(feats).astype(np.float64)
    mean = f.mean(axis=0)
    std = np.maximum(f.std(axis=0), 0.05 * np.abs(mean) + 1e-3)
    z = ((f - mean) / std)[:, :_N_SEMANTIC]
    centre = z.mean(axis=0)
    cov = np.cov(z, rowvar=False) + 0.05 * np.eye(_N_SEMANTIC)
    values, vectors = np.linalg.eigh(cov)
    whiten = vectors / np.sqrt(values) / math.sqrt(_N_SEMANTIC)
    bank = 6.0 * np.tanh(z[:, :_N_SCRAMBLED] / 6.0)
    return _Calibration(mean.astype(np.float32), std.astype(np.float32),
                        centre.astype(np.float32), whiten.astype(np.float32),
                        bank.astype(np.float32))


#: Atypicality (RMS Mahalanobis distance to the calibration set) from which
#: pictures get confused evidence, the largest confusion level, the level
#: from which their colour/type/view evidence is entirely hallucinated, the
#: gain of an extra picture-specific jitter, and the |z| above which the
#: "quality" detectors fire.
_ATYPICAL_FROM = 2.5
_MAX_LEVEL = 2.5
_HALLUCINATE_FULL = 0.75
_SCRAMBLE_GAIN = 0.25
_HALLUCINATE_TEMP = 0.3
_QUALITY_FROM = 2.5


def _standard_features(images: np.ndarray) -> np.ndarray:
    """Standardised features and activation gain (N, _N_STORED) float32 of uint8
    images (N, H, W, 3).

    * Semantic features (all groups but ``quality``) are standardised with
      the calibration statistics and squashed to about +-6 (``6 tanh(z/6)``).
    * Atypical pictures get confused colour, type and view evidence.  A
      picture's atypicality is the RMS Mahalanobis distance ``d`` of its
      semantic features to the calibration set (about 0.6 for normal
      pictures, 1 to 300 for the planted outliers) and its confusion level
      ``clip(log2(d / 2.5), 0, 2.5)``.  Its colour/type/view features are
      mixed, in proportion ``min(level / 0.75, 1)``, with a softmax-weighted
      (temperature 0.3) blend of those of the calibration pictures, weighted
      by the match of their fixed random keys with its 32 standardised pixel
      codes (random projections of the coarse picture, contrast-normalised
      down to a floor), and jittered by ``0.25 * level`` times a fixed
      linear map of its pixel codes, as networks give confident but
      arbitrary answers on out-of-distribution input.  Similar pictures get
      similar answers; faint pictures, whose codes are faint, get a blend of
      many.
    * ``quality`` holds 32 detectors ``clip(+-z - 2.5, 0, 8)`` of the 16
      image statistics: zero on normal pictures, firing on glare, darkness,
      blur and empty roads.
    * The last column holds the activation gain (:func:`_activation_gain`).
    """
    cal = _calibration()
    raw = _raw_features(images)
    z = (raw - cal.mean) / cal.std
    sem = z[:, :_N_SEMANTIC]
    dist = np.sqrt((((sem - cal.centre) @ cal.whiten) ** 2).sum(axis=1))
    level = np.clip(np.log2(np.maximum(dist, 1e-6) / _ATYPICAL_FROM), 0.0, _MAX_LEVEL)
    out = np.empty((len(images), _N_STORED), np.float32)
    out[:, :_N_SEMANTIC] = 6.0 * np.tanh(sem / 6.0)
    codes = z[:, _N_SEMANTIC:]
    # hallucinated colour/type/view evidence: a soft choice among the
    # calibration pictures, by the match of their keys with the pixel codes
    atypical = np.flatnonzero(level > 0)
    if len(atypical):
        mix = np.clip(level[atypical] / _HALLUCINATE_FULL, 0.0, 1.0)[:, None]
        match = codes[atypical] @ _hallucination_keys()
        match *= 1.0 / _HALLUCINATE_TEMP
        match -= match.max(axis=1, keepdims=True)
        weight = np.exp(match, out=match)
        weight /= weight.sum(axis=1, keepdims=True)
        sc = out[atypical, :_N_SCRAMBLED]
        sc *= 1.0 - mix
        sc += mix * (weight @ cal.bank)
        sc += (_SCRAMBLE_GAIN * level[atypical])[:, None] * (codes[atypical] @ _scramble_matrix())
        out[atypical, :_N_SCRAMBLED] = sc
    stats = z[:, _SLICES["image"]]
    out[:, _SLICES["quality"]] = np.concatenate(
        [np.clip(stats - _QUALITY_FROM, 0.0, 8.0), np.clip(-stats - _QUALITY_FROM, 0.0, 8.0)], axis=1)
    out[:, _N_FEATURES] = _activation_gain(raw, cal)
    return out


#: Exponents of the activation gain in the picture's contrast, brightness
#: and foreground share (each relative to the calibration mean), and the
#: range of its logarithm.
_GAIN_CONTRAST = 0.12
_GAIN_BRIGHT = 0.08
_GAIN_FOREGROUND = 0.05
_GAIN_LOG_RANGE = (-0.8, 0.4)


def _activation_gain(raw: np.ndarray, cal: _Calibration) -> np.ndarray:
    """Per-picture factor (N,) of the activations: low on faint, flat or empty
    pictures, high on bright ones, about 1 (+-7 %) on normal ones."""
    sl = _SLICES["image"]
    stats, ref = raw[:, sl], cal.mean[sl]
    rel = stats[:, [0, 1, 13]] / ref[[0, 1, 13]]  # brightness, contrast, foreground share
    log_gain = (_GAIN_CONTRAST * np.log(np.maximum(rel[:, 1], 0.05))
                + _GAIN_BRIGHT * np.log(np.maximum(rel[:, 0], 0.05))
                + _GAIN_FOREGROUND * np.log((np.minimum(rel[:, 2], 1.5) + 0.1) / 1.1))
    return np.exp(np.clip(log_gain, *_GAIN_LOG_RANGE))


# --------------------------------------------------------------------------
# The four "networks": fixed seeded projections of the features
# --------------------------------------------------------------------------
#: Feature-group weights, output noise and projection seed of each set.
_NETS: dict[str, dict] = {
    "efficientnet-b7": dict(seed=7, noise=0.35, weights=dict(
        color_hist=1.2, color_stats=0.45, type=1.1, view=0.6, mask=0.1, edges=0.1, image=0.35,
        quality=0.35)),
    "osnet": dict(seed=11, noise=0.35, weights=dict(
        color_hist=1.5, color_stats=0.6, type=0.9, view=0.5, mask=0.1, edges=0.15, image=0.35,
        quality=0.35)),
    "vdc_color": dict(seed=13, noise=0.3, weights=dict(
        color_hist=3.0, color_stats=1.5, type=0.1, view=0.1, mask=0.1, edges=0.1, image=0.3,
        quality=0.3)),
    "vdc_type": dict(seed=17, noise=0.3, weights=dict(
        color_hist=0.1, color_stats=0.1, type=3.0, view=0.8, mask=0.5, edges=0.3, image=0.2,
        quality=0.3)),
}


@functools.cache
def _projection(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights (F, d) and bias (d,) of set `name`."""
    net = _NETS[name]
    d = DESCRIPTOR_DIMS[name]
    sizes = _group_sizes()
    scale = np.concatenate([np.full(sizes[g], net["weights"][g] / math.sqrt(sizes[g]), np.float32)
                            for g in _NET_GROUPS])
    # normal images have unit variance in every semantic group and no quality signal
    scale /= math.sqrt(sum(w * w for g, w in net["weights"].items() if g != "quality"))
    rng = np.random.default_rng([net["seed"], d])
    w = rng.standard_normal((_N_FEATURES, d), dtype=np.float32) * scale[:, None]
    b = rng.normal(-0.2, 0.3, d).astype(np.float32)
    return w, b


def _project(name: str, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Descriptors (N, d) float32 of set `name` from cached rows (N, _N_STORED):
    standardised features, then the activation gain."""
    w, b = _projection(name)
    y = z[:, :_N_FEATURES] @ w
    y += b
    y += _noise(rng, y.shape, np.float32(_NETS[name]["noise"]))
    np.maximum(y, 0.0, out=y)
    y *= z[:, _N_FEATURES:]
    return y


# --------------------------------------------------------------------------
# Writing the case
# --------------------------------------------------------------------------
def _bounded_map(fn, items, workers: int, window: int):
    """``map(fn, items)`` on a thread pool, in order, with at most `window` pending."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _rel_paths(plan: _Plan, lo: int, hi: int, sep: str) -> list[str]:
    return [f"veriwild{sep}1{sep}{v:05d}{sep}{i:06d}.jpg"
            for v, i in zip(plan.vehicle[lo:hi].tolist(), plan.image[lo:hi].tolist())]


def _time_strings(seconds: np.ndarray) -> list[str]:
    stamps = np.datetime_as_string(_START + seconds.astype("timedelta64[s]"), unit="s")
    return [s.replace("T", " ") for s in stamps.tolist()]


def _write_text_files(plan: _Plan, out: pathlib.Path, step: int = 65536) -> None:
    """Write images_paths.csv, truth.csv and vehicle_info.txt, `step` rows at a time."""
    n = plan.n_rows
    with open(out / "images_paths.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("paths\n")
        for lo in range(0, n, step):
            f.write("".join(p + "\n" for p in _rel_paths(plan, lo, min(lo + step, n), "\\")))
    colors = np.array(COLORS, dtype=object)
    types = np.array(TYPES, dtype=object)
    views = np.array(VIEWS, dtype=object)
    models = np.array(_MODEL_NAMES, dtype=object)
    kinds = np.array(OUTLIER_KINDS + ("",), dtype=object)  # index -1 -> ""
    with open(out / "truth.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("path,vehicle_id,color,type,view,model,camera,outlier_kind,is_outlier,outlier_group\n")
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            sl = slice(lo, hi)
            cols = zip(_rel_paths(plan, lo, hi, "/"), plan.vehicle[sl].tolist(),
                       colors[plan.color[sl]], types[plan.type[sl]], views[plan.view[sl]],
                       models[plan.model[sl]], (plan.camera[sl] + 1).tolist(),
                       kinds[plan.outlier[sl]], (plan.outlier[sl] >= 0).tolist(), plan.group[sl].tolist())
            f.write("".join(f"{p},{v},{c},{t},{w},{m},c{k:03d},{o},{b},{g}\n"
                            for p, v, c, t, w, m, k, o, b, g in cols))
    order = np.lexsort((plan.image, plan.time, plan.camera))
    with open(out / "vehicle_info.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("id/image;Camera ID;Time;Model;Type;Color\n")
        for lo in range(0, n, step):
            idx = order[lo:lo + step]
            cols = zip(plan.vehicle[idx].tolist(), plan.image[idx].tolist(),
                       (plan.camera[idx] + 1).tolist(), _time_strings(plan.time[idx]),
                       models[plan.model[idx]], types[plan.type[idx]], colors[plan.color[idx]])
            f.write("".join(f"{v:05d}/{i:06d};c{k:03d};{t}; {m}; {ty}; {c}\n"
                            for v, i, k, t, m, ty, c in cols))


def make_demo_case(
    out_dir: str | os.PathLike[str],
    n_rows: int = 20_000,
    *,
    seed: int = 0,
    images: bool = True,
    outlier_fraction: float = 0.01,
    block_rows: int = 8192,
    progress: bool = False,
) -> pathlib.Path:
    """Write a synthetic VeRi-Wild-like case with planted truth.

    Writes ``descriptors/{efficientnet-b7,osnet,vdc_color,vdc_type}.pickle``
    (float32 arrays of shape ``(n_rows, DESCRIPTOR_DIMS[name])``),
    ``images_paths.csv``, ``vehicle_info.txt``, ``truth.csv`` and, with
    `images`, ``images.zip``; see the module docstring for their formats, the
    planted truth and how each descriptor set sees it.  ``streamclust convert``
    records ``vehicle_info.txt`` and ``images.zip`` in the store, so a study of
    the converted case uses them without being told (``streamclust demo`` does).  Memory stays bounded
    whatever `n_rows` (about 0.5 GB peak): pictures are rendered 512 rows at
    a time and every pickle is written streamed, block by block.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Case folder to write, created if needed.  Files of the names above
        are overwritten; an ``images.zip`` left there is removed when
        `images` is False.
    n_rows : int, default 20000
        Number of images (rows of every descriptor array), >= 1.  Vehicle
        ids have 5 digits up to 99,999 vehicles (about a million rows),
        image ids 6 digits up to 999,999 rows; beyond, they grow.
    seed : int, default 0
        Seed of everything random in the case (>= 0); the same seed gives
        byte-identical pickles, CSV, text and zip files.
    images : bool, default True
        Also write ``images.zip``: one 64 x 48 JPEG per row (about 1.6 KB
        each), stored uncompressed, named like the CSV paths with forward
        slashes.
    outlier_fraction : float, default 0.01
        Fraction of outlier images, in ``[0, 0.5]``: exactly
        ``round(outlier_fraction * n_rows)`` rows, the four kinds in equal
        shares, about half of them in groups of similar pictures (see the
        module docstring).
    block_rows : int, default 8192
        Rows per block handed to the pickle writer, rounded up to a multiple
        of 512.  Bounds the memory (the largest block holds ``block_rows x
        2560`` float32, 84 MB by default); does not change the output.
    progress : bool, default False
        Show tqdm progress bars (rendering, then one bar per descriptor set).

    Returns
    -------
    pathlib.Path
        `out_dir`.

    Raises
    ------
    InputError
        If an argument is out of range or `out_dir` exists and is not a
        directory.

    Examples
    --------
    >>> case = make_demo_case("demo-case", 6000, seed=1)  # doctest: +SKIP
    >>> truth = load_truth(case)  # doctest: +SKIP
    >>> truth["is_outlier"].sum()  # doctest: +SKIP
    60
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise InputError(f"n_rows must be an integer >= 1, got {n_rows!r}")
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise InputError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    if not 0.0 <= float(outlier_fraction) <= 0.5:
        raise InputError(f"outlier_fraction must lie in [0, 0.5], got {outlier_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    n_rows, seed, block_rows = int(n_rows), int(seed), int(block_rows)
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; give a folder for the case.")
    (out / "descriptors").mkdir(parents=True, exist_ok=True)

    from threadpoolctl import threadpool_limits

    # one BLAS thread: the rendering threads are the parallelism (more would
    # oversubscribe the cores), and results do not depend on the machine
    with threadpool_limits(limits=1, user_api="blas"):
        _write_case(out, n_rows, seed, images, float(outlier_fraction), block_rows, progress)
    return out


def _write_case(out: pathlib.Path, n_rows: int, seed: int, images: bool,
                outlier_fraction: float, block_rows: int, progress: bool) -> None:
    """The work of :func:`make_demo_case`, arguments checked."""
    from tqdm.auto import tqdm

    from streamclust.io.pickle_stream import write_pickled_array

    plan = _make_plan(n_rows, seed, outlier_fraction)
    _write_text_files(plan, out)
    _calibration()  # before the threads start
    _templates()

    n_chunks = -(-n_rows // _CHUNK)
    workers = max(1, min(2, os.cpu_count() or 1))

    def render_chunk(c: int):
        lo, hi = c * _CHUNK, min((c + 1) * _CHUNK, n_rows)
        imgs = _render(plan, lo, hi, _chunk_rng(seed, 1, c))
        return _standard_features(imgs), ([_jpeg(im) for im in imgs] if images else None)

    # standardised features of every row, cached in a plain binary file (not
    # memory-mapped, so that they never count towards the resident memory)
    feature_path = out / f".demo-features-{os.getpid()}.tmp"
    zip_path = out / "images.zip"
    partial_zip = out / "images.zip.partial"
    row_bytes = _N_STORED * 4
    try:
        with open(feature_path, "wb") as cache:
            zf = zipfile.ZipFile(partial_zip, "w", zipfile.ZIP_STORED) if images else None
            try:
                with tqdm(total=n_rows, desc="render", unit="img", disable=not progress) as bar:
                    chunks = _bounded_map(render_chunk, range(n_chunks), workers, 2 * workers)
                    for c, (z, jpegs) in enumerate(chunks):
                        cache.write(np.ascontiguousarray(z, np.float32).data)
                        if zf is not None:
                            lo = c * _CHUNK
                            for name, data in zip(_rel_paths(plan, lo, lo + len(z), "/"), jpegs):
                                info = zipfile.ZipInfo(name, date_time=(2018, 3, 1, 0, 0, 0))
                                zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)
                        bar.update(len(z))
            finally:
                if zf is not None:
                    zf.close()
        if images:
            os.replace(partial_zip, zip_path)
        elif zip_path.exists():
            zip_path.unlink()  # images of an earlier case in this folder

        step = -(-block_rows // _CHUNK) * _CHUNK
        for k, (name, d) in enumerate(DESCRIPTOR_DIMS.items()):

            def blocks(name=name, k=k, d=d, bar=None) -> Iterator[np.ndarray]:
                with open(feature_path, "rb") as cache:
                    for lo in range(0, n_rows, step):
                        hi = min(lo + step, n_rows)
                        block = np.empty((hi - lo, d), np.float32)
                        for c0 in range(lo, hi, _CHUNK):
                            c1 = min(c0 + _CHUNK, hi)
                            cache.seek(c0 * row_bytes)
                            z = np.fromfile(cache, np.float32, (c1 - c0) * _N_STORED)
                            rng = _chunk_rng(seed, 10 + k, c0 // _CHUNK)
                            block[c0 - lo:c1 - lo] = _project(name, z.reshape(c1 - c0, -1), rng)
                        if bar is not None:
                            bar.update(hi - lo)
                        yield block

            with tqdm(total=n_rows, desc=name, unit="row", disable=not progress) as bar:
                write_pickled_array(out / "descriptors" / f"{name}.pickle", (n_rows, d),
                                    np.float32, blocks(bar=bar), protocol=4)
    finally:
        for leftover in (feature_path, partial_zip):
            try:
                os.remove(leftover)
            except FileNotFoundError:
                pass


def load_truth(case_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the planted truth of a demo case.

    Parameters
    ----------
    case_dir : str or os.PathLike
        Folder written by :func:`make_demo_case`.

    Returns
    -------
    pandas.DataFrame
        One row per image, in the row order of ``images_paths.csv`` (shape
        ``(n_rows, 10)``): ``path`` (forward slashes), ``vehicle_id`` (int),
        ``color``, ``type``, ``view``, ``model``, ``camera``, ``outlier_kind``
        (``""`` for normal images), ``is_outlier`` (bool) and
        ``outlier_group`` (int: the group of similar outlier pictures the row
        belongs to, -1 for normal images and isolated outliers; -1 throughout
        for a ``truth.csv`` written before groups existed, which lacks the
        column).

    Raises
    ------
    InputError
        If the folder has no ``truth.csv`` (real cases have none) or it is
        malformed.
    """
    path = pathlib.Path(case_dir) / "truth.csv"
    if not path.is_file():
        raise InputError(f"{path}: missing; only demo cases made by make_demo_case have a planted truth.")
    columns = ["path", "vehicle_id", "color", "type", "view", "model", "camera", "outlier_kind", "is_outlier"]
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: empty file.") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}.")
    df = df[columns + (["outlier_group"] if "outlier_group" in df.columns else [])].copy()
    if "outlier_group" not in df.columns:  # a case written before outlier groups
        df["outlier_group"] = "-1"
    for col in ("vehicle_id", "outlier_group"):
        try:
            df[col] = df[col].astype(np.int64)
        except ValueError as exc:
            raise InputError(f"{path}: {col} must be integers ({exc}).") from exc
    flags = df["is_outlier"].str.lower()
    if not flags.isin(["true", "false"]).all():
        raise InputError(f"{path}: is_outlier must be True or False.")
    df["is_outlier"] = (flags == "true").to_numpy()
    return df
