import numpy as np
import pytest
from skimage.draw import ellipse

torch = pytest.importorskip("torch")

from napari_recist_seg.core.grouping import group_lesions  # noqa: E402
from napari_recist_seg.core.pseudo_masks import pseudo_mask  # noqa: E402
from napari_recist_seg.core.recist import Recist, recist_from_mask  # noqa: E402
from napari_recist_seg.core.training_targets import DEFAULT_TARGET  # noqa: E402
from napari_recist_seg.data import dataset as dataset_module  # noqa: E402
from napari_recist_seg.data.crops import lesion_crop, window_ct  # noqa: E402
from napari_recist_seg.data.dataset import EpochSampler, LesionDataset, pair_indices  # noqa: E402
from napari_recist_seg.data.samples import (  # noqa: E402
    ct_phantom_slice,
    ct_phantom_volume,
    dermoscopy_dataset,
)

SIZE = 32


@pytest.fixture(scope="module")
def derm():
    images, masks = dermoscopy_dataset(6, seed=3, size=48)
    return images, masks, [recist_from_mask(m) for m in masks]


@pytest.fixture(scope="module")
def ct():
    d = ct_phantom_slice(0)
    n = len(d["recists"])
    d["gt"] = [d["masks"] == i + 1 for i in range(n)]
    return d


def ct_dataset(d, **kwargs):
    n = len(d["recists"])
    return LesionDataset.from_crops([d["image"]], d["recists"], image_index=[0] * n, **kwargs)


def check_item(item, channels, size, index):
    assert set(item) == {"image", "mask", "group", "gt", "has_gt", "index"}
    assert item["image"].shape == (channels, size, size) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, size, size) and item["mask"].dtype == torch.float32
    assert item["gt"].shape == (1, size, size) and item["gt"].dtype == torch.float32
    assert item["group"].dtype == torch.int64 and item["group"].ndim == 0
    assert isinstance(item["has_gt"], bool) and item["index"] == index
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}


# -- construction and items -------------------------------------------------------------------
def test_whole_image_items(derm):
    images, masks, recists = derm
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, gt_masks=masks)
    assert len(ds) == 6 and ds.n_channels == 3 and ds.transforms is None
    for i in range(len(ds)):
        item = ds[i]
        check_item(item, 3, SIZE, i)
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["has_gt"]
        pm, gt = item["mask"][0].numpy() > 0, item["gt"][0].numpy() > 0
        assert 2 * (pm & gt).sum() / (pm.sum() + gt.sum()) > 0.6
    # The RECIST is scaled with the image (48 -> 32 pixels).
    np.testing.assert_allclose(ds.recists[0].long_length, recists[0].long_length * SIZE / 48)
    assert ds.source_recists == recists
    assert ds[-1]["index"] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_whole_image_pseudo_mask_is_drawn_at_output_size(derm):
    images, _, recists = derm
    ds = LesionDataset.from_whole_images(
        images[:2], recists[:2], size=SIZE, pseudo_mask_method="polygon"
    )
    expected = pseudo_mask(ds.recists[1], (SIZE, SIZE), "polygon")
    np.testing.assert_array_equal(ds.pseudo_mask(1), expected)


def test_non_square_images_and_grey_images():
    lesion = np.zeros((60, 90), dtype=bool)
    rr, cc = ellipse(30, 50, 12, 25, rotation=0.6)
    lesion[rr, cc] = True
    img = np.where(lesion, 200, 20).astype(np.uint8)
    r = recist_from_mask(lesion)
    ds = LesionDataset.from_whole_images([img], [r], size=SIZE, gt_masks=[lesion])
    item = ds[0]
    check_item(item, 1, SIZE, 0)
    gt = item["gt"][0].numpy() > 0
    pm = item["mask"][0].numpy() > 0
    # The ellipse is drawn before the anisotropic resize, so it still fits the lesion.
    assert 2 * (pm & gt).sum() / (pm.sum() + gt.sum()) > 0.9
    np.testing.assert_array_equal(item["image"][0].numpy() > 0.43, gt)
    back = ds.paste_back(0, gt)
    assert back.shape == (60, 90)
    assert (back != lesion).mean() < 0.02


def test_crop_items_match_lesion_crop(ct):
    ds = ct_dataset(ct, size=SIZE, margin=0.5, window="liver", gt_masks=ct["gt"])
    assert ds.n_channels == 1 and len(ds) == len(ct["recists"])
    for i, r in enumerate(ct["recists"]):
        item = ds[i]
        check_item(item, 1, SIZE, i)
        patch, t = lesion_crop(ct["image"], r, size=SIZE, margin=0.5)
        expected = np.rint(window_ct(patch, "liver") * 255) / 255
        np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
        assert ds.transforms[i] == t
        np.testing.assert_array_equal(
            ds.pseudo_mask(i), pseudo_mask(t.crop_recist(r), (SIZE, SIZE), DEFAULT_TARGET)
        )
        pm, gt = ds.pseudo_mask(i), ds.gt_mask(i)
        assert 2 * (pm & gt).sum() / (pm.sum() + gt.sum()) > 0.6
        back = ds.paste_back(i, gt)
        src = ct["gt"][i]
        assert 2 * (back & src).sum() / (back.sum() + src.sum()) > 0.85


def test_crops_default_window_and_per_lesion_windows(ct):
    n = len(ct["recists"])
    default = ct_dataset(ct, size=SIZE)
    soft = ct_dataset(ct, size=SIZE, window="soft_tissue")
    np.testing.assert_array_equal(default.image_u8(0), soft.image_u8(0))
    per = ct_dataset(ct, size=SIZE, window=["lung"] + [(-160, 240)] * (n - 1))
    np.testing.assert_array_equal(per.image_u8(1), soft.image_u8(1))
    assert not np.array_equal(per.image_u8(0), soft.image_u8(0))
    with pytest.raises(ValueError, match="window"):
        ct_dataset(ct, size=SIZE, window=["lung", "bone"] * (n + 1))


def test_volume_crops_stack_neighbouring_slices():
    v = ct_phantom_volume(0, n_slices=8)
    n = len(v["recists"])
    gt = [v["masks"] == i + 1 for i in range(n)]
    ds = LesionDataset.from_crops(
        [v["image"]],
        v["recists"],
        image_index=[0] * n,
        slices=v["slices"],
        context=1,
        size=SIZE,
        gt_masks=gt,
    )
    assert ds.n_channels == 3
    for i, (r, z) in enumerate(zip(v["recists"], v["slices"])):
        item = ds[i]
        check_item(item, 3, SIZE, i)
        patch, _ = lesion_crop(v["image"][z], r, size=SIZE)
        np.testing.assert_allclose(
            item["image"][1].numpy(), np.rint(window_ct(patch) * 255) / 255, atol=1e-6
        )
        assert ds.has_gt[i] and ds.gt_mask(i).any()
    with pytest.raises(ValueError, match="context"):
        LesionDataset.from_crops([v["image"][0]], v["recists"][:1], context=1, size=SIZE)


def test_rgb_crops_and_imagenet_normalisation(derm):
    images, masks, recists = derm
    ds = LesionDataset.from_crops(images, recists, size=SIZE, normalise="imagenet")
    item = ds[0]
    check_item(item, 3, SIZE, 0)
    assert item["image"].min() < 0  # standardised, no longer in [0, 1]
    with pytest.raises(ValueError, match="3 channels"):
        img = images[0].mean(axis=2).astype(np.uint8)
        LesionDataset.from_crops([img], recists[:1], size=SIZE, normalise="imagenet")


def test_unknown_ground_truth_is_flagged_and_collates(derm):
    images, masks, recists = derm
    gt = [masks[0], None, masks[2], None, None, masks[5]]
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, gt_masks=gt)
    np.testing.assert_array_equal(ds.has_gt, [True, False, True, False, False, True])
    assert ds.gt_mask(1) is None
    item = ds[1]
    assert item["has_gt"] is False and torch.isnan(item["gt"]).all()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch["image"].shape == (6, 3, SIZE, SIZE)
    assert batch["has_gt"].tolist() == [True, False, True, False, False, True]
    assert batch["group"].dtype == torch.int64
    no_gt = LesionDataset.from_whole_images(images, recists, size=SIZE)
    assert not no_gt.has_gt.any()


def test_groups_from_values_and_from_a_grouping(derm):
    images, _, recists = derm
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE)
    assert ds.groups.tolist() == [0] * 6
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, groups=[0, 1, 2, 0, 1, 2])
    assert [ds[i]["group"].item() for i in range(6)] == [0, 1, 2, 0, 1, 2]
    grouping = group_lesions(recists, 2)
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, groups=grouping)
    np.testing.assert_array_equal(ds.groups, grouping.predict(recists))
    with pytest.raises(ValueError, match="groups"):
        LesionDataset.from_whole_images(images, recists, size=SIZE, groups=[0, 1])
    with pytest.raises(ValueError, match="non-negative"):
        LesionDataset.from_whole_images(images, recists, size=SIZE, groups=[-1] * 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 40}, "size"),
        ({"pseudo_mask_method": "circle"}, "pseudo-mask"),
        ({"gt_masks": [None]}, "gt_masks"),
        ({"jitter": 2.0}, "jitter"),
        ({"normalise": "minmax"}, "normalise"),
    ],
)
def test_whole_image_input_errors(derm, kwargs, match):
    images, _, recists = derm
    with pytest.raises(ValueError, match=match):
        LesionDataset.from_whole_images(images, recists, **{"size": SIZE, **kwargs})


def test_crop_input_errors(ct):
    img, recists = ct["image"], ct["recists"]
    with pytest.raises(ValueError, match="image_index"):
        LesionDataset.from_crops([img], recists, size=SIZE)
    with pytest.raises(ValueError, match="image_index"):
        LesionDataset.from_crops([img], recists, image_index=[1] * len(recists), size=SIZE)
    with pytest.raises(ValueError, match="images"):
        LesionDataset.from_whole_images([img], recists, size=SIZE)
    with pytest.raises(ValueError, match="Recist"):
        LesionDataset.from_crops([img], ["not a recist"], size=SIZE)
    with pytest.raises(ValueError, match="empty"):
        LesionDataset.from_crops([], [], size=SIZE)


# -- caching and lazy loading ------------------------------------------------------------------
def test_pseudo_masks_are_drawn_once_per_lesion(monkeypatch, derm, ct):
    calls = []

    original = dataset_module.training_target

    def counting(recist, shape, method="ellipse", image=None):
        calls.append(method)
        return original(recist, shape, method, image)

    monkeypatch.setattr(dataset_module, "training_target", counting)
    images, _, recists = derm
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, augment=True)
    assert len(calls) == len(recists)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
    assert len(calls) == len(recists)
    calls.clear()
    crops = ct_dataset(ct, size=SIZE, lazy=True)
    for i in range(len(crops)):
        crops[i]
        crops[i]
    assert len(calls) == len(ct["recists"])


def test_sources_are_read_once_when_preloaded(ct):
    reads = []

    def loader(key):
        reads.append(key)
        return ct["image"]

    n = len(ct["recists"])
    ds = LesionDataset.from_crops(
        ["a", "b"], ct["recists"], image_index=[i % 2 for i in range(n)], size=SIZE, loader=loader
    )
    assert sorted(reads) == ["a", "b"]
    for i in range(n):
        ds[i]
    assert len(reads) == 2
    assert ds.nbytes == n * SIZE * SIZE + 2 * n * SIZE * SIZE // 8


def test_lazy_items_equal_preloaded_and_cache_is_bounded(ct):
    reads = []

    def loader(key):
        reads.append(key)
        return ct["image"]

    n = len(ct["recists"])
    keys = [f"slice{i}" for i in range(n)]
    eager = LesionDataset.from_crops(keys, ct["recists"], size=SIZE, loader=loader)
    reads.clear()
    lazy = LesionDataset.from_crops(
        keys, ct["recists"], size=SIZE, loader=loader, lazy=True, cache_size=2
    )
    assert lazy.nbytes < eager.nbytes
    for i in range(n):
        np.testing.assert_array_equal(lazy[i]["image"].numpy(), eager[i]["image"].numpy())
        assert len(lazy._images.source) <= 2
    reads.clear()
    lazy[n - 1]  # still cached
    assert reads == []
    lazy[0]  # evicted long ago
    assert reads == ["slice0"]


def test_lazy_whole_images_from_paths(tmp_path, derm):
    from skimage import io

    images, masks, recists = derm
    paths = []
    for i, im in enumerate(images[:3]):
        p = tmp_path / f"img{i}.png"
        io.imsave(p, im, check_contrast=False)
        paths.append(p)
    lazy = LesionDataset.from_whole_images(paths, recists[:3], size=SIZE, lazy=True, cache_size=1)
    eager = LesionDataset.from_whole_images(images[:3], recists[:3], size=SIZE)
    for i in range(3):
        np.testing.assert_array_equal(lazy[i]["image"].numpy(), eager[i]["image"].numpy())
    assert len(lazy._images.source) == 1
    callables = LesionDataset.from_whole_images(
        [lambda im=im: im for im in images[:3]], recists[:3], size=SIZE
    )
    np.testing.assert_array_equal(callables.image_u8(2), eager.image_u8(2))


# -- augmentation and epochs -------------------------------------------------------------------
def asymmetric_lesions(n=8, size=SIZE, seed=0):
    """Images whose bright region is exactly the (off-centre, asymmetric) pseudo-mask."""
    rng = np.random.default_rng(seed)
    images, recists = [], []
    for _ in range(n):
        r0, c0 = rng.uniform(8, 14, size=2)
        long_len, short_len = rng.uniform(10, 14), rng.uniform(4, 7)
        r = Recist(
            [[r0, c0], [r0 + long_len * 0.6, c0 + long_len * 0.8]],
            [
                [r0 + 3.0 - short_len * 0.4, c0 + 4.0 + short_len * 0.3],
                [r0 + 3.0 + short_len * 0.4, c0 + 4.0 - short_len * 0.3],
            ],
        )
        m = pseudo_mask(r, (size, size), "quarter_ellipse")
        images.append(np.where(m, 230, 25).astype(np.uint8))
        recists.append(r)
    return images, recists


def test_augmentation_keeps_image_mask_and_gt_aligned():
    images, recists = asymmetric_lesions()
    gt = [im > 128 for im in images]
    ds = LesionDataset.from_whole_images(
        images,
        recists,
        size=SIZE,
        pseudo_mask_method="quarter_ellipse",
        gt_masks=gt,
        augment=True,
        jitter=0.2,
    )
    changed = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            from_image = item["image"][0].numpy() > 0.5
            np.testing.assert_array_equal(from_image, item["gt"][0].numpy() > 0.5)
            np.testing.assert_array_equal(from_image, item["mask"][0].numpy() > 0.5)
            changed += not np.array_equal(from_image, gt[i])
    assert changed > 0.5 * 4 * len(ds)  # most items were flipped or rotated
    plain = LesionDataset.from_whole_images(images, recists, size=SIZE, gt_masks=gt)
    np.testing.assert_array_equal(plain[0]["image"][0].numpy() > 0.5, gt[0])


def test_jitter_changes_intensities_only_when_augmenting():
    images, recists = asymmetric_lesions(2)
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, augment=True, jitter=0.2)
    plain = LesionDataset.from_whole_images(images, recists, size=SIZE)
    values = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        values.add(round(float(ds[0]["image"].max()), 4))
    assert len(values) > 1
    assert plain[0]["image"].max().item() == pytest.approx(230 / 255)


def test_set_epoch_makes_augmentation_and_order_reproducible():
    images, recists = asymmetric_lesions(6)
    a = LesionDataset.from_whole_images(images, recists, size=SIZE, augment=True, seed=7)
    b = LesionDataset.from_whole_images(images, recists, size=SIZE, augment=True, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    # Reading order does not matter: item i of epoch e is always the same.
    first = [a[i]["image"] for i in range(6)]
    second = [b[i]["image"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    np.testing.assert_array_equal(a.epoch_order(), b.epoch_order())
    assert sorted(a.epoch_order().tolist()) == list(range(6))
    orders = set()
    images_by_epoch = []
    for epoch in range(5):
        a.set_epoch(epoch)
        orders.add(tuple(a.epoch_order().tolist()))
        images_by_epoch.append(torch.stack([a[i]["image"] for i in range(6)]))
    assert len(orders) > 1
    assert not all(torch.equal(images_by_epoch[0], x) for x in images_by_epoch[1:])
    c = LesionDataset.from_whole_images(images, recists, size=SIZE, augment=True, seed=8)
    c.set_epoch(3)
    a.set_epoch(3)
    assert not all(torch.equal(a[i]["image"], c[i]["image"]) for i in range(6))
    np.testing.assert_array_equal(a.epoch_order(shuffle=False), np.arange(6))
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def test_epoch_sampler_follows_the_epoch():
    images, recists = asymmetric_lesions(5)
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, augment=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=EpochSampler(ds))
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batch = next(iter(loader))
        assert batch["index"].tolist() == ds.epoch_order().tolist()
        assert torch.equal(batch["image"][0], ds[ds.epoch_order()[0]]["image"])
    assert len(EpochSampler(ds)) == 5


# -- pairs -------------------------------------------------------------------------------------
def test_pair_indices_same_group():
    groups = np.array([0, 1, 0, 2, 1, 0, 3, 1, 1, 0])
    partner = pair_indices(groups, seed=0)
    assert partner.dtype == np.int64 and partner.shape == groups.shape
    np.testing.assert_array_equal(groups[partner], groups)
    singles = [i for i in range(len(groups)) if (groups == groups[i]).sum() == 1]
    for i in range(len(groups)):
        assert (partner[i] == i) == (i in singles)
    np.testing.assert_array_equal(pair_indices(groups, seed=0), partner)
    draws = {tuple(pair_indices(groups, seed=s)) for s in range(10)}
    assert len(draws) > 1


def test_pair_indices_random_and_errors():
    groups = [0] * 3 + [1] * 4
    for seed in range(5):
        partner = pair_indices(groups, seed=seed, mode="random")
        assert (partner != np.arange(7)).all() and partner.max() < 7
    assert pair_indices([5], mode="random").tolist() == [0]
    assert pair_indices([], mode="same_group").tolist() == []
    with pytest.raises(ValueError, match="mode"):
        pair_indices(groups, mode="nearest")
    with pytest.raises(ValueError, match="groups"):
        pair_indices([[0, 1]])


def test_dataset_partners_follow_the_epoch(derm):
    images, _, recists = derm
    ds = LesionDataset.from_whole_images(images, recists, size=SIZE, groups=[0, 0, 0, 1, 1, 1])
    p0 = ds.partners()
    np.testing.assert_array_equal(ds.groups[p0], ds.groups)
    np.testing.assert_array_equal(ds.partners(), p0)
    assert any(not np.array_equal(p0, (ds.set_epoch(e), ds.partners())[1]) for e in range(1, 6))


def test_large_images_are_reduced_in_place_and_small_ones_as_before():
    from skimage.transform import resize

    from napari_recist_seg.data.dataset import _to_unit, _unit_to_u8, _whole_u8

    # A bright block in a 2400 x 3200 picture: averaged down first (a factor of 25), it still
    # lands where the pixel grid puts it, and its brightness is kept.
    big = np.zeros((2400, 3200), np.uint8)
    big[600:1200, 2000:2800] = 200
    out = _whole_u8(big, 96, None)[0].astype(float)
    rows, cols = np.nonzero(out > 100)
    assert rows.mean() == pytest.approx((900 - 0.5) * 96 / 2400 + (96 / 2400 - 1) / 2, abs=0.3)
    assert cols.mean() == pytest.approx((2400 - 0.5) * 96 / 3200 + (96 / 3200 - 1) / 2, abs=0.3)
    assert out[rows, cols].mean() == pytest.approx(200, abs=15)
    # A reduction of 4 or less is skimage's anti-aliased resize, unchanged.
    small = np.random.default_rng(0).integers(0, 255, (256, 200, 3), dtype=np.uint8)
    unit = _to_unit(np.moveaxis(small, -1, 0))
    expected = _unit_to_u8(np.moveaxis(resize(np.moveaxis(unit, 0, -1), (64, 64), order=1,
                                              anti_aliasing=True, mode="edge"), -1, 0))
    np.testing.assert_array_equal(_whole_u8(small, 64, -1), expected)
