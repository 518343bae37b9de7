"""Pseudo-masks drawn from a RECIST alone."""

import numpy as np
import pytest
from skimage.draw import ellipse

from napari_recist_seg.core.pseudo_masks import (
    PSEUDO_MASK_METHODS,
    pseudo_mask,
    pseudo_mask_labels,
)
from napari_recist_seg.core.recist import Recist


def _recist(centre, angle_deg, long_minus, long_plus, short_minus, short_plus):
    """RECIST crossing at ``centre``: the long axis reaches ``long_minus`` / ``long_plus`` px
    from the crossing on either side, the short axis ``short_minus`` / ``short_plus``."""
    c = np.asarray(centre, dtype=float)
    t = np.radians(angle_deg)
    d = np.array([np.sin(t), np.cos(t)])
    n = np.array([-d[1], d[0]])
    return Recist(
        [c - long_minus * d, c + long_plus * d], [c - short_minus * n, c + short_plus * n]
    )


# Axis-aligned, integer endpoints, crossing off-centre on both axes (at a quarter of the long
# axis; the short axis split 6:10).
_OFF = Recist([[20, 10], [20, 50]], [[14, 20], [30, 20]])
# The same shape on the diagonal, crossing at (20, 20), short axis split 6:4 in length units.
_OFF_DIAG = Recist([[10, 10], [40, 40]], [[14, 26], [24, 16]])


@pytest.mark.parametrize("method", PSEUDO_MASK_METHODS)
def test_each_method_is_bool_of_the_requested_shape(method):
    r = _recist((35, 40), 30, 20, 20, 8, 8)
    m = pseudo_mask(r, (70, 90), method)
    assert m.dtype == bool
    assert m.shape == (70, 90)
    assert 0 < m.sum() < m.size
    # The centre pixel is always inside the figure.
    assert m[35, 40]


def test_ellipse_matches_skimage_ellipse():
    # Long axis 60 px along the columns, short axis 30 px along the rows, centred at (50, 60).
    r = Recist([[50, 30], [50, 90]], [[35, 60], [65, 60]])
    m = pseudo_mask(r, (100, 120), "ellipse")
    ref = np.zeros_like(m)
    rr, cc = ellipse(50, 60, 15, 30, shape=ref.shape)
    ref[rr, cc] = True
    assert abs(int(m.sum()) - int(ref.sum())) / ref.sum() < 0.03
    assert abs(m.sum() - np.pi * 30 * 15) / (np.pi * 30 * 15) < 0.03
    assert (m & ref).sum() / (m | ref).sum() > 0.97
    # Symmetric about the centre.
    np.testing.assert_array_equal(m[50:, :], m[50::-1, :][:50, :])
    np.testing.assert_array_equal(m[:, 60:], m[:, 60::-1][:, :60])


def test_rotated_ellipse_area_and_orientation():
    r = _recist((60, 60), 30, 25, 25, 10, 10)
    m = pseudo_mask(r, (120, 120), "ellipse")
    assert abs(m.sum() - np.pi * 25 * 10) / (np.pi * 25 * 10) < 0.03
    pts = np.argwhere(m).astype(float)
    pts -= pts.mean(axis=0)
    evals, evecs = np.linalg.eigh(pts.T @ pts)
    major = evecs[:, np.argmax(evals)]  # (row, col)
    angle = np.degrees(np.arctan2(major[0], major[1])) % 180
    assert min(abs(angle - 30), 180 - abs(angle - 30)) < 1.0


@pytest.mark.parametrize("r", [_OFF, _OFF_DIAG, _recist((60, 60), 17, 30, 30, 12, 12)])
def test_polygon_inside_quarter_ellipse_and_smaller_than_ellipses(r):
    shape = (120, 120)
    poly = pseudo_mask(r, shape, "polygon")
    quarter = pseudo_mask(r, shape, "quarter_ellipse")
    sym = pseudo_mask(r, shape, "ellipse")
    assert poly.sum() < quarter.sum()
    assert poly.sum() < sym.sum()
    # The quadrilateral through the endpoints is inside the quarter ellipses through them; allow
    # a couple of pixels where both outlines pass exactly through a pixel centre (the endpoints).
    assert (poly & ~quarter).sum() <= 4
    # Polygon area is half the product of the axes; the quarter ellipses' is pi/4 of it.
    area = r.long_length * r.short_length
    assert abs(poly.sum() - area / 2) / (area / 2) < 0.1
    assert abs(quarter.sum() - np.pi * area / 4) / (np.pi * area / 4) < 0.06


@pytest.mark.parametrize("r", [_OFF, _OFF_DIAG])
def test_quarter_ellipse_passes_through_all_four_endpoints(r):
    m = pseudo_mask(r, (64, 64), "quarter_ellipse")
    for p in np.rint(r.endpoints).astype(int):
        # Integer endpoints sit exactly on the outline; rounding may put the centre a hair
        # outside, so a pixel touching the endpoint is accepted.
        assert m[max(p[0] - 1, 0) : p[0] + 2, max(p[1] - 1, 0) : p[1] + 2].any(), p
    # Axis-aligned integer endpoints are exactly representable: the endpoint pixels themselves.
    if r is _OFF:
        assert all(m[int(p[0]), int(p[1])] for p in r.endpoints)
    # Nothing beyond the endpoints along either axis.
    c = r.centre
    d = (r.long_axis[1] - r.long_axis[0]) / r.long_length
    n = np.array([-d[1], d[0]])
    pts = np.argwhere(m).astype(float) - c
    u, v = pts @ d, pts @ n
    lu = (r.long_axis - c) @ d
    sv = (r.short_axis - c) @ n
    assert u.min() >= lu.min() - 1e-6 and u.max() <= lu.max() + 1e-6
    assert v.min() >= sv.min() - 1e-6 and v.max() <= sv.max() + 1e-6


def test_off_centre_crossing_ellipse_vs_quarter_ellipse():
    r = _OFF  # crossing at (20, 20): 10 px from the left end, 30 px from the right
    sym = pseudo_mask(r, (64, 64), "ellipse")
    quarter = pseudo_mask(r, (64, 64), "quarter_ellipse")
    # The symmetric ellipse is centred at the intersection, not at the long axis's middle.
    np.testing.assert_allclose(np.argwhere(sym).mean(axis=0), r.centre, atol=0.25)
    assert sym[20, 20 - 19] and not sym[20, 50]  # reaches 20 px each way from the crossing
    # The quarter ellipse leans towards the longer half-axes (right, and down).
    centroid = np.argwhere(quarter).mean(axis=0)
    assert centroid[1] > r.centre[1] + 5
    assert centroid[0] > r.centre[0] + 1
    assert quarter[20, 50] and not quarter[20, 9]


def test_quarter_ellipse_of_a_symmetric_recist_is_the_ellipse():
    r = _recist((50, 50), 0, 25, 25, 10, 10)
    np.testing.assert_array_equal(
        pseudo_mask(r, (100, 100), "quarter_ellipse"), pseudo_mask(r, (100, 100), "ellipse")
    )


def test_quarter_ellipse_is_not_cut_off_when_oblique_and_off_centre():
    # Crossing near one end of an oblique long axis: the quadrant towards the far end bulges
    # past the endpoints' bounding box (sideways along the columns here).
    a, b = 39.5, 19.9
    r = _recist((80, 80), 45, 0.5, a, b, b)
    m = pseudo_mask(r, (160, 160), "quarter_ellipse")
    c = r.centre
    d = (r.long_axis[1] - r.long_axis[0]) / r.long_length
    n = np.array([-d[1], d[0]])
    # The point of that quadrant's outline farthest along the columns, pulled 5% inwards
    # (about 2 px inside the outline).
    phi = np.arctan2(b * n[1], a * d[1])
    p = c + 0.95 * (a * np.cos(phi) * d + b * np.sin(phi) * n)
    assert p[1] > r.bbox[3] + 1.5  # well beyond every endpoint
    assert m[int(round(p[0])), int(round(p[1]))]
    # Translating the measurement translates the mask (nothing depends on the window).
    m2 = pseudo_mask(r.translated((-20, -15)), (160, 160), "quarter_ellipse")
    np.testing.assert_array_equal(m2[:-20, :-15], m[20:, 15:])


@pytest.mark.parametrize("method", ["circle", "", None, "Ellipse"])
def test_unknown_method_raises(method):
    with pytest.raises(ValueError, match="unknown pseudo-mask method"):
        pseudo_mask(_OFF, (64, 64), method)
    with pytest.raises(ValueError, match="unknown pseudo-mask method"):
        pseudo_mask_labels([_OFF], (64, 64), method)


@pytest.mark.parametrize("shape", [(0, 10), (10, -1), (10,), (10, 10, 3), "ab", None, 64])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="shape must be"):
        pseudo_mask(_OFF, shape)
    with pytest.raises(ValueError, match="shape must be"):
        pseudo_mask_labels([_OFF], shape)


def test_not_a_recist_raises():
    with pytest.raises(ValueError, match="recist must be a Recist"):
        pseudo_mask([[0, 0], [10, 10]], (20, 20))


@pytest.mark.parametrize("method", PSEUDO_MASK_METHODS)
def test_lesion_partly_outside_the_image_is_clipped(method):
    # Centred near the top-left corner, reaching past both edges.
    r = _recist((3, 4), 20, 18, 12, 7, 9)
    assert r.bbox[0] < 0 and r.bbox[1] < 0
    m = pseudo_mask(r, (30, 40), method)
    assert m.shape == (30, 40) and m.any()
    # Same as drawing in a larger canvas and cropping.
    big = pseudo_mask(r.translated((50, 50)), (130, 140), method)
    np.testing.assert_array_equal(m, big[50:80, 50:90])
    # Entirely outside: empty, no error.
    assert not pseudo_mask(r.translated((-100, 0)), (30, 40), method).any()
    assert not pseudo_mask(r.translated((0, 500)), (30, 40), method).any()


@pytest.mark.parametrize("method", PSEUDO_MASK_METHODS)
def test_pseudo_mask_labels(method):
    lesions = [
        _recist((20, 20), 0, 10, 10, 5, 5),
        _recist((60, 30), 45, 12, 6, 4, 7),
        _recist((30, 70), 100, 8, 14, 6, 3),
    ]
    shape = (90, 100)
    lab = pseudo_mask_labels(lesions, shape, method)
    assert lab.dtype == np.int32 and lab.shape == shape
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 3}
    for i, r in enumerate(lesions, start=1):
        np.testing.assert_array_equal(lab == i, pseudo_mask(r, shape, method))
    custom = pseudo_mask_labels(lesions, shape, method, labels=[7, 9, 250])
    np.testing.assert_array_equal(custom == 9, lab == 2)
    assert set(np.unique(custom).tolist()) == {0, 7, 9, 250}


def test_pseudo_mask_labels_overlap_and_errors():
    a = _recist((30, 30), 0, 15, 15, 8, 8)
    b = a.translated((0, 6))
    lab = pseudo_mask_labels([a, b], (60, 70))
    # Later lesions are drawn on top.
    np.testing.assert_array_equal(lab == 2, pseudo_mask(b, (60, 70)))
    assert (lab == 1).sum() == (pseudo_mask(a, (60, 70)) & ~pseudo_mask(b, (60, 70))).sum()
    assert not pseudo_mask_labels([], (5, 5)).any()
    with pytest.raises(ValueError, match="labels has 1 entries for 2 lesions"):
        pseudo_mask_labels([a, b], (60, 70), labels=[1])
