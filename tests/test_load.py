"""Memory that does not grow with the data: lazy data sets, grouping at DeepLesion's size.

These are light checks of the properties the benchmarks measure at full size
(``benchmarks/stream_memory.py``: 20,000 crops trained from disk; ``benchmarks/
grouping_scale.py``: 32,735 lesions in 190 groups). Memory is measured with ``tracemalloc``,
which sees numpy's buffers, so the checks do not depend on what else the process holds.
"""

from __future__ import annotations

import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest

from napari_recist_seg.core import grouping as grouping_module
from napari_recist_seg.core.grouping import LesionGrouping, group_lesions
from napari_recist_seg.core.recist import Recist
from napari_recist_seg.data.dataset import LesionDataset

SIZE = 128  # network input: an unpacked mask is 16 KiB, a packed one 2 KiB


def _write_images(folder, n, seed=0):
    """``n`` small RGB images on disk and a RECIST for each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    paths, recists = [], []
    for i in range(n):
        path = folder / f"img{i:05d}.png"
        iio.imwrite(path, rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8))
        paths.append(path)
        half = rng.uniform(3, 8)
        recists.append(Recist([[12, 12 - half], [12, 12 + half]], [[12 - half / 2, 12],
                                                                     [12 + half / 2, 12]]))
    return paths, recists


def _traced_peak(build):
    tracemalloc.start()
    try:
        result = build()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_lazy_dataset_holds_packed_masks_and_a_bounded_cache(tmp_path):
    n, cache = 64, 5
    paths, recists = _write_images(tmp_path / "images", n)
    ds = LesionDataset.from_whole_images(paths, recists, size=SIZE, lazy=True, cache_size=cache)
    # Only the bit-packed pseudo-masks and (absent) true masks are kept ...
    assert ds.nbytes == 2 * n * SIZE * SIZE // 8
    # ... and reading every item keeps no more than the cache's source images.
    for i in range(n):
        item = ds[i]
        assert item["image"].shape == (3, SIZE, SIZE)
        assert len(ds._images.source) <= cache
    held = sum(a.nbytes for a in ds._images.source._cache.values())
    assert held <= cache * 24 * 24 * 3


def test_building_a_lazy_dataset_takes_memory_per_lesion_of_its_packed_masks(tmp_path):
    """Unpacked masks for every lesion (2 x 16 KiB each at 128 px) are never all in memory
    at once: the extra memory per lesion is close to the 4 KiB of its two packed masks."""
    small_n, big_n = 40, 240
    paths, recists = _write_images(tmp_path / "images", big_n)

    def build(n):
        return LesionDataset.from_whole_images(paths[:n], recists[:n], size=SIZE, lazy=True)

    build(small_n)  # first use imports and caches: not what is measured
    _, small = _traced_peak(lambda: build(small_n))
    _, big = _traced_peak(lambda: build(big_n))
    per_lesion = (big - small) / (big_n - small_n)
    assert per_lesion < 12 * 1024, per_lesion


def test_predicting_groups_for_many_lesions_works_in_bounded_blocks():
    rng = np.random.default_rng(1)
    k, n = 190, 6000
    grouping = LesionGrouping("standardised", rng.normal(size=(k, 6)), np.zeros(6), np.ones(6))
    recists = []
    for _ in range(n):
        c = rng.uniform(0, 512, size=2)
        half = rng.uniform(2, 30)
        recists.append(Recist([c - [0, half], c + [0, half]], [c - [half / 2, 0],
                                                                c + [half / 2, 0]]))
    x = grouping.transform(recists)
    labels, peak = _traced_peak(lambda: grouping.predict(recists))
    # All n x k x 6 differences at once would take 55 MB.
    assert peak < 20e6, peak
    d2 = ((x[:, None, :] - grouping.centres[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, np.argmin(d2, axis=1))


@pytest.mark.parametrize(("n", "k", "restarts"), [(500, 4, 10), (10_000, 200, 10),
                                                  (11_000, 190, 3), (32_735, 190, 3)])
def test_restarts_are_fewer_only_for_deeplesion_sized_groupings(monkeypatch, n, k, restarts):
    seen = {}

    class Recorder:
        def __init__(self, n_clusters, n_init, random_state):
            seen.update(n_init=n_init, random_state=random_state)

        def fit(self, x):
            raise StopIteration  # the choice is made; no need to cluster

    monkeypatch.setattr("sklearn.cluster.KMeans", Recorder)
    recist = Recist([[10, 10], [10, 30]], [[5, 20], [15, 20]])
    monkeypatch.setattr(grouping_module, "recist_features",
                        lambda recists, features: np.arange(len(recists) * 6.0).reshape(-1, 6))
    with pytest.raises(StopIteration):
        group_lesions([recist] * n, k, seed=7)
    assert seen == {"n_init": restarts, "random_state": 7}
    with pytest.raises(StopIteration):
        group_lesions([recist] * n, k, seed=7, n_init=5)
    assert seen["n_init"] == 5
