"""Recist: measurement geometry, validation, DeepLesion and Shapes conversions, and
``recist_from_mask``."""

import time

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_recist_seg.core.recist import (
    Recist,
    recist_from_mask,
    recists_from_shapes,
    recists_to_shapes,
)


def _recist_at(centre, angle_deg, long_length, short_length, **kwargs):
    """Symmetric RECIST centred at ``centre`` with the long axis at ``angle_deg``."""
    c = np.asarray(centre, dtype=float)
    t = np.radians(angle_deg)
    d = np.array([np.sin(t), np.cos(t)])  # (row, col) direction of the long axis
    n = np.array([-d[1], d[0]])
    return Recist(
        [c - long_length / 2 * d, c + long_length / 2 * d],
        [c - short_length / 2 * n, c + short_length / 2 * n],
        **kwargs,
    )


# -- lengths, centre, angle --------------------------------------------------------------


def test_lengths_in_pixels():
    r = Recist([[0, 0], [30, 40]], [[19, 17], [11, 23]])
    assert r.long_length == pytest.approx(50.0)
    assert r.short_length == pytest.approx(10.0)
    assert r.spacing == (1.0, 1.0)
    assert r.long_mm == pytest.approx(50.0)


def test_mm_lengths_with_anisotropic_spacing():
    # Axis-aligned axes stay perpendicular whatever the spacing.
    r = Recist([[10, 0], [10, 40]], [[5, 20], [15, 20]], spacing=(2.0, 0.5))
    assert r.long_length == pytest.approx(40.0)
    assert r.short_length == pytest.approx(10.0)
    assert r.long_mm == pytest.approx(40 * 0.5)
    assert r.short_mm == pytest.approx(10 * 2.0)
    # An oblique axis mixes both spacings.
    r = Recist([[0, 0], [30, 30]], [[15, 14], [14, 15]], spacing=(0.8, 0.8))
    assert r.long_mm == pytest.approx(np.hypot(30 * 0.8, 30 * 0.8))
    assert r.short_mm == pytest.approx(np.hypot(0.8, 0.8))


def test_centre_is_the_intersection_for_an_off_centre_crossing():
    # Short axis crosses a quarter of the way along the long axis, and is itself split 6:10.
    r = Recist([[10, 0], [10, 40]], [[4, 10], [20, 10]])
    np.testing.assert_allclose(r.centre, [10, 10])
    assert not np.allclose(r.centre, r.long_axis.mean(axis=0))
    # Oblique: long axis on the diagonal, short axis crossing at (20, 20), split 6:4.
    r = Recist([[10, 10], [40, 40]], [[14, 26], [24, 16]])
    np.testing.assert_allclose(r.centre, [20, 20], atol=1e-12)


@pytest.mark.parametrize(
    "long_axis, expected",
    [
        ([[5, 0], [5, 10]], 0.0),
        ([[5, 10], [5, 0]], 0.0),  # reversed endpoints: same orientation
        ([[0, 0], [10, 10]], 45.0),
        ([[10, 10], [0, 0]], 45.0),
        ([[0, 5], [10, 5]], 90.0),
        ([[10, 5], [0, 5]], 90.0),
        ([[0, 10], [10, 0]], 135.0),  # rows down, cols left: atan2(10, -10) = 135
        ([[10, 0], [0, 10]], 135.0),
        ([[0, 0], [10, 10 * np.sqrt(3)]], 30.0),
    ],
)
def test_angle_convention(long_axis, expected):
    la = np.asarray(long_axis, dtype=float)
    c = la.mean(axis=0)
    d = la[1] - la[0]
    n = np.array([-d[1], d[0]]) / np.linalg.norm(d)
    r = Recist(la, [c - 2 * n, c + 2 * n])
    assert r.angle == pytest.approx(expected, abs=1e-9)
    d_row, d_col = la[1] - la[0]
    assert r.angle == pytest.approx(np.degrees(np.arctan2(d_row, d_col)) % 180, abs=1e-9)


@pytest.mark.parametrize("d_row", [-1e-15, -1e-300, -0.0, 1e-15])
def test_angle_stays_below_180_for_nearly_horizontal_axes(d_row):
    # atan2 of a tiny negative row step is -0.000...; folding it to [0, 180) must not round up
    # to 180 itself.
    r = Recist([[0, 0], [d_row, 100]], [[-10, 50], [10, 50]])
    assert 0.0 <= r.angle < 180.0
    assert min(r.angle, 180 - r.angle) < 1e-9


def test_perpendicularity_error():
    # Short axis 80 degrees from the long axis: 10 degrees off a right angle.
    t = np.radians(100)
    e = np.array([np.sin(t), np.cos(t)])
    c = np.array([50.0, 50.0])
    r = Recist([[50, 30], [50, 70]], [c - 5 * e, c + 5 * e])
    assert r.perpendicularity_error == pytest.approx(10.0)
    assert Recist([[0, 0], [0, 10]], [[-2, 5], [2, 5]]).perpendicularity_error == pytest.approx(0)
    # Measured in mm: axes that are perpendicular in pixels at 45 degrees are not perpendicular
    # once the columns are twice as wide as the rows.
    r = Recist([[0, 0], [10, 10]], [[6, 4], [4, 6]], spacing=(1, 2), max_perpendicularity_error=90)
    d, s = np.array([10, 20]), np.array([-2, 4])
    expected = 90 - np.degrees(np.arccos(abs(d @ s) / np.linalg.norm(d) / np.linalg.norm(s)))
    assert r.perpendicularity_error == pytest.approx(expected)
    assert r.perpendicularity_error > 30


def test_endpoints_bbox_and_read_only():
    r = Recist([[10, 0], [10, 40]], [[4, 10], [20, 10]])
    np.testing.assert_array_equal(r.endpoints, [[10, 0], [10, 40], [4, 10], [20, 10]])
    assert r.bbox == (4.0, 0.0, 20.0, 40.0)
    with pytest.raises(ValueError):
        r.long_axis[0, 0] = 3.0
    with pytest.raises(ValueError):
        r.centre[0] = 3.0


def test_equality_and_hash():
    a = Recist([[10, 0], [10, 40]], [[4, 10], [20, 10]])
    b = Recist(np.array([[10, 0], [10, 40]]), ((4, 10), (20, 10)))
    c = a.with_spacing((2, 2))
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert c.spacing == (2.0, 2.0)


# -- validation ----------------------------------------------------------------------------

_LONG = [[10, 0], [10, 40]]
_SHORT = [[4, 10], [20, 10]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates_raise(bad):
    with pytest.raises(ValueError, match="long_axis has non-finite"):
        Recist([[10, bad], [10, 40]], _SHORT)
    with pytest.raises(ValueError, match="short_axis has non-finite"):
        Recist(_LONG, [[4, 10], [bad, 10]])


def test_zero_length_axes_raise():
    with pytest.raises(ValueError, match="long axis has zero length"):
        Recist([[10, 10], [10, 10]], _SHORT)
    with pytest.raises(ValueError, match="short axis has zero length"):
        Recist(_LONG, [[10, 10], [10, 10]])


def test_short_longer_than_long_raises():
    with pytest.raises(ValueError, match="short axis .* longer than the long axis"):
        Recist([[10, 0], [10, 20]], [[-5, 10], [25, 10]])
    # Equal lengths are a valid (round) lesion.
    assert Recist([[10, 0], [10, 20]], [[0, 10], [20, 10]]).short_length == 20


def test_axes_whose_segments_do_not_cross_raise():
    # The lines meet at (10, 50), beyond the long axis's end at column 40.
    with pytest.raises(ValueError, match="does not cross"):
        Recist(_LONG, [[4, 50], [20, 50]])
    # The short segment stops before reaching the long axis's line (row 10).
    with pytest.raises(ValueError, match="does not cross"):
        Recist(_LONG, [[12, 10], [20, 10]])
    # Touching at an endpoint still counts as crossing (marks snapped to pixels).
    r = Recist(_LONG, [[10, 10], [20, 10]])
    np.testing.assert_allclose(r.centre, [10, 10])


def test_perpendicularity_tolerance():
    t = np.radians(70)  # 20 degrees off perpendicular to a horizontal long axis
    e = np.array([np.sin(t), np.cos(t)])
    c = np.array([10.0, 20.0])
    short = [c - 5 * e, c + 5 * e]
    with pytest.raises(ValueError, match=r"20\.0 degrees from perpendicular \(tolerance 15"):
        Recist(_LONG, short)
    r = Recist(_LONG, short, max_perpendicularity_error=25)
    assert r.perpendicularity_error == pytest.approx(20.0)
    assert r.max_perpendicularity_error == 25
    with pytest.raises(ValueError, match="tolerance 5"):
        Recist(_LONG, _SHORT[:1] + [[20, 12]], max_perpendicularity_error=5)


@pytest.mark.parametrize("tol", [-1, 91, np.nan, np.inf])
def test_bad_tolerance_raises(tol):
    with pytest.raises(ValueError, match="max_perpendicularity_error"):
        Recist(_LONG, _SHORT, max_perpendicularity_error=tol)


@pytest.mark.parametrize(
    "long_axis, short_axis, match",
    [
        ([[10, 0], [10, 40], [0, 0]], _SHORT, r"long_axis must be a 2x2 .*shape \(3, 2\)"),
        ([10, 0, 10, 40], _SHORT, r"long_axis must be a 2x2 .*shape \(4,\)"),
        (_LONG, [[4, 10, 0], [20, 10, 0]], r"short_axis must be a 2x2 .*shape \(2, 3\)"),
        (_LONG, [[4, 10], [20]], "short_axis must be a 2x2"),
        (_LONG, "ab", "short_axis must be a 2x2"),
        (None, _SHORT, "long_axis"),
    ],
)
def test_wrong_shapes_raise(long_axis, short_axis, match):
    with pytest.raises(ValueError, match=match):
        Recist(long_axis, short_axis)


@pytest.mark.parametrize(
    "spacing", [(0, 1), (1, -1), (1,), (1, 1, 1), (np.nan, 1), (1, np.inf), "ab", None]
)
def test_bad_spacing_raises(spacing):
    with pytest.raises(ValueError, match="spacing must be"):
        Recist(_LONG, _SHORT, spacing=spacing)


def test_coordinates_and_pixel_sizes_too_large_to_measure_are_named():
    # A well-drawn RECIST scaled up: its lengths would overflow, and it used to be rejected
    # as "parallel" or "90 degrees from perpendicular".
    huge = 1e200
    with pytest.raises(ValueError, match=r"long_axis has coordinates beyond 1e\+15 pixels"):
        Recist(np.asarray(_LONG) * huge, np.asarray(_SHORT) * huge)
    with pytest.raises(ValueError, match=r"between 1e-09 and 1e\+06 mm per pixel"):
        Recist(_LONG, _SHORT, spacing=(1e-300, 1.0))
    with pytest.raises(ValueError, match=r"between 1e-09 and 1e\+06 mm per pixel"):
        Recist(_LONG, _SHORT, spacing=(1.0, 1e300))
    # At the bounds the measurement still holds.
    big = Recist(np.asarray(_LONG) * 1e13, np.asarray(_SHORT) * 1e13, spacing=(1e6, 1e6))
    small = Recist(np.asarray(_LONG) * 1e-3, np.asarray(_SHORT) * 1e-3, spacing=(1e-9, 1e-9))
    reference = Recist(_LONG, _SHORT)
    for r, factor in ((big, 1e19), (small, 1e-12)):
        assert r.long_mm == pytest.approx(reference.long_mm * factor)
        assert r.perpendicularity_error == pytest.approx(reference.perpendicularity_error,
                                                         abs=1e-6)


# -- DeepLesion ----------------------------------------------------------------------------

_DL = [11.0, 21.0, 51.0, 21.0, 31.0, 11.0, 31.0, 31.0]


def test_from_deeplesion_is_one_based_x_then_y():
    r = Recist.from_deeplesion(_DL, spacing=(0.7, 0.7))
    # x1, y1 = 11, 21 -> row 20, col 10.
    np.testing.assert_array_equal(r.long_axis, [[20, 10], [20, 50]])
    np.testing.assert_array_equal(r.short_axis, [[10, 30], [30, 30]])
    assert r.spacing == (0.7, 0.7)
    assert r.long_mm == pytest.approx(40 * 0.7)


def test_deeplesion_round_trip_is_exact():
    # Four decimals, as in DL_info.csv.
    coords = [round(v, 4) for v in _recist_at((101.3, 233.7), 37.3, 21.37, 9.81).to_deeplesion()]
    r = Recist.from_deeplesion(coords)
    assert r.to_deeplesion() == coords
    r0 = Recist.from_deeplesion(coords, one_based=False)
    assert r0.to_deeplesion(one_based=False) == coords
    np.testing.assert_allclose(r0.endpoints - r.endpoints, 1.0)


def test_from_deeplesion_accepts_the_csv_string():
    r = Recist.from_deeplesion("11, 21, 51, 21, 31, 11, 31, 31")
    assert r == Recist.from_deeplesion(_DL)
    assert Recist.from_deeplesion(",".join(str(v) for v in _DL)) == r
    assert Recist.from_deeplesion(np.array(_DL).reshape(4, 2)) == r


@pytest.mark.parametrize(
    "value, match",
    [
        (_DL[:7], "needs 8 numbers, got 7"),
        (_DL + [1.0], "needs 8 numbers, got 9"),
        ("1, 2, 3", "needs 8 numbers, got 3"),
        ("", "needs 8 numbers, got 0"),
        ("11, 21, 51, 21, 31, 11, 31, abc", "not a number"),
        ([11, 21, 51, 21, 31, 11, 31, None], "not a number"),
        ("11, 21, 51, 21, 31, 11, 31, nan", "non-finite"),
        (None, "needs 8 numbers"),
    ],
)
def test_from_deeplesion_bad_input_raises(value, match):
    with pytest.raises(ValueError, match=match):
        Recist.from_deeplesion(value)


# -- translated / scaled ------------------------------------------------------------------


def test_translated():
    r = Recist([[10, 0], [10, 40]], [[4, 10], [20, 10]], spacing=(0.5, 0.5))
    t = r.translated((-3, 7.5))
    np.testing.assert_allclose(t.endpoints, r.endpoints + [-3, 7.5])
    np.testing.assert_allclose(t.centre, r.centre + [-3, 7.5])
    assert t.long_length == pytest.approx(r.long_length)
    assert t.spacing == r.spacing
    assert t.angle == pytest.approx(r.angle)


@pytest.mark.parametrize("factor", [2.0, 0.25, (2.0, 0.5)])
def test_scaled_keeps_mm_lengths(factor):
    r = Recist([[0, 0], [30, 30]], [[18, 12], [12, 18]], spacing=(0.8, 0.8))
    s = r.scaled(factor)
    f = np.broadcast_to(np.asarray(factor, dtype=float), (2,))
    np.testing.assert_allclose(s.endpoints, r.endpoints * f)
    np.testing.assert_allclose(s.spacing, np.array(r.spacing) / f)
    assert s.long_mm == pytest.approx(r.long_mm)
    assert s.short_mm == pytest.approx(r.short_mm)
    if np.isscalar(factor):
        assert s.long_length == pytest.approx(r.long_length * factor)


@pytest.mark.parametrize("factor", [0, -1, np.nan, np.inf, (1, 0)])
def test_scaled_bad_factor_raises(factor):
    r = Recist(_LONG, _SHORT)
    with pytest.raises(ValueError, match="scale factor"):
        r.scaled(factor)


# -- napari Shapes -------------------------------------------------------------------------


def _lesions():
    return [
        Recist([[10, 0], [10, 40]], [[4, 10], [20, 10]]),
        Recist([[50, 50], [80, 80]], [[68, 62], [62, 68]]),
        _recist_at((30, 70), 120, 25.5, 9.25),
    ]


def test_shapes_round_trip_2d():
    lesions = _lesions()
    data, features = recists_to_shapes(lesions)
    assert len(data) == 6
    assert all(np.asarray(d).shape == (2, 2) for d in data)
    assert features["lesion_id"] == [0, 0, 1, 1, 2, 2]
    assert features["axis"] == ["long", "short"] * 3
    back, ids, slices = recists_from_shapes(data, features, spacing=(0.5, 0.5))
    assert ids == [0, 1, 2]
    assert slices is None
    for a, b in zip(lesions, back):
        np.testing.assert_array_equal(a.endpoints, b.endpoints)
        assert b.spacing == (0.5, 0.5)


def test_shapes_round_trip_3d_with_slices_and_ids():
    lesions = _lesions()
    data, features = recists_to_shapes(lesions, slices=[3, 0, 12], lesion_ids=[7, 2, 9])
    assert all(np.asarray(d).shape == (2, 3) for d in data)
    np.testing.assert_array_equal(data[4][:, 0], [12, 12])
    back, ids, slices = recists_from_shapes(data, features)
    assert ids == [7, 2, 9]
    assert slices == [3, 0, 12]
    assert back == lesions


def test_shapes_in_any_order_and_from_a_dataframe():
    import pandas as pd

    lesions = _lesions()
    data, features = recists_to_shapes(lesions)
    order = [5, 0, 3, 1, 4, 2]  # shuffled: lesion 2's short axis first
    data = [data[i] for i in order]
    df = pd.DataFrame({k: [v[i] for i in order] for k, v in features.items()})
    back, ids, _ = recists_from_shapes(data, df)
    assert ids == [2, 0, 1]
    assert back == [lesions[2], lesions[0], lesions[1]]


def test_shapes_missing_column_raises():
    data, features = recists_to_shapes(_lesions())
    with pytest.raises(ValueError, match="'axis' feature"):
        recists_from_shapes(data, {"lesion_id": features["lesion_id"]})
    with pytest.raises(ValueError, match="'lesion_id' feature"):
        recists_from_shapes(data, {"axis": features["axis"]})


def test_shapes_lesion_with_one_line_raises():
    data, features = recists_to_shapes(_lesions())
    keep = [0, 1, 2, 4, 5]  # lesion 1 loses its short axis
    sub = {k: [v[i] for i in keep] for k, v in features.items()}
    with pytest.raises(ValueError, match="lesion 1 has no short axis"):
        recists_from_shapes([data[i] for i in keep], sub)


def test_shapes_two_long_lines_raise():
    data, features = recists_to_shapes(_lesions())
    features["axis"][1] = "long"
    with pytest.raises(ValueError, match="lesion 0 has two long axes"):
        recists_from_shapes(data, features)


def test_shapes_axes_on_different_slices_raise():
    data, features = recists_to_shapes(_lesions(), slices=[1, 2, 3])
    data[3] = data[3].copy()
    data[3][:, 0] = 5  # lesion 1's short axis moved to another slice
    with pytest.raises(ValueError, match="lesion 1: its two axes are not on the same slice"):
        recists_from_shapes(data, features)


def test_shapes_invalid_measurement_names_the_lesion():
    data, features = recists_to_shapes(_lesions(), lesion_ids=[4, 5, 6])
    # Lesion 5's short axis moved along the long axis's direction, past its end.
    data[3] = np.array([[68, 92], [62, 98]], dtype=float)
    with pytest.raises(ValueError, match="lesion 5: short axis does not cross"):
        recists_from_shapes(data, features)


def test_shapes_bad_axis_name_and_lengths_raise():
    data, features = recists_to_shapes(_lesions())
    bad = dict(features, axis=["long", "width"] + features["axis"][2:])
    with pytest.raises(ValueError, match="axis must be 'long' or 'short'"):
        recists_from_shapes(data, bad)
    with pytest.raises(ValueError, match="5 shapes but 6 lesion_id"):
        recists_from_shapes(data[:5], features)
    with pytest.raises(ValueError, match="line of 2 points"):
        recists_from_shapes([np.zeros((3, 2))] + data[1:], features)
    with pytest.raises(ValueError, match="slices has 2 entries for 3 lesions"):
        recists_to_shapes(_lesions(), slices=[1, 2])


# -- recist_from_mask ----------------------------------------------------------------------


def _ellipse_mask(shape, centre, r_radius, c_radius, rotation=0.0):
    m = np.zeros(shape, dtype=bool)
    rr, cc = ellipse(centre[0], centre[1], r_radius, c_radius, shape=shape, rotation=rotation)
    m[rr, cc] = True
    return m


@pytest.mark.parametrize("r_radius, c_radius", [(15, 30), (30, 15), (22.5, 8)])
def test_mask_of_axis_aligned_ellipse(r_radius, c_radius):
    m = _ellipse_mask((100, 120), (50, 60), r_radius, c_radius)
    r = recist_from_mask(m)
    long_true, short_true = 2 * max(r_radius, c_radius), 2 * min(r_radius, c_radius)
    # Lengths are measured between pixel centres and skimage leaves out pixels on the outline,
    # so each end falls up to a pixel short (a little more for the short axis, which is measured
    # across a long axis tilted by the blunt tips).
    assert long_true - 2 <= r.long_length <= long_true + 0.5
    assert short_true - 2.5 <= r.short_length <= short_true + 0.5
    expected_angle = 0.0 if c_radius > r_radius else 90.0
    diff = abs(r.angle - expected_angle) % 180
    assert min(diff, 180 - diff) < 10  # blunt tips tilt the farthest pixel pair a few degrees
    # A reader crosses a symmetric lesion in its middle.
    np.testing.assert_allclose(r.centre, [50, 60], atol=1.5)
    assert r.perpendicularity_error < 1e-6


def test_mask_of_rectangle_gives_the_diagonal():
    m = np.zeros((60, 90), dtype=np.uint8)
    m[10:30, 20:60] = 1  # pixel centres rows 10..29, cols 20..59
    r = recist_from_mask(m)
    assert r.long_length == pytest.approx(np.hypot(19, 39))
    corners = {tuple(p) for p in r.long_axis.tolist()}
    assert corners in ({(10.0, 20.0), (29.0, 59.0)}, {(10.0, 59.0), (29.0, 20.0)})
    # Longest chord across the diagonal, perpendicular to it: 19 / cos(atan(19 / 39)).
    expected_short = 19 / np.cos(np.arctan2(19, 39))
    # Pixel centres half a bin either side of the chord can lengthen it a little.
    assert expected_short - 1.5 <= r.short_length <= expected_short + 0.5
    assert r.perpendicularity_error < 1e-6


def test_mask_largest_component_is_measured():
    m = np.zeros((100, 100), dtype=bool)
    m[disk((20, 20), 5)] = True  # small blob
    m[disk((65, 60), 20)] = True  # big blob
    r = recist_from_mask(m)
    assert 38 <= r.long_length <= 40.5
    np.testing.assert_allclose(r.centre, [65, 60], atol=2)
    lo = np.array(r.bbox[:2])
    assert np.all(lo >= [44, 39])


def test_mask_at_image_border():
    m = np.zeros((40, 40), dtype=bool)
    m[0:10, 25:40] = True
    r = recist_from_mask(m)
    assert r.long_length == pytest.approx(np.hypot(9, 14))
    # Within the image's pixel area (pixel centres 0..39, edges at -0.5 and 39.5).
    assert np.all(r.endpoints >= -0.5) and np.all(r.endpoints <= 39.5)
    assert np.all(r.long_axis >= 0) and np.all(r.long_axis <= 39)


def test_empty_mask_raises():
    with pytest.raises(ValueError, match="empty"):
        recist_from_mask(np.zeros((20, 20), dtype=bool))


def test_single_pixel_raises():
    m = np.zeros((20, 20), dtype=bool)
    m[5, 5] = True
    with pytest.raises(ValueError, match="single pixel"):
        recist_from_mask(m)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 4)), np.zeros(9), np.array(1.0)])
def test_mask_not_2d_raises(bad):
    bad = bad.copy()
    bad.flat[:2] = 1
    with pytest.raises(ValueError, match="mask must be 2D"):
        recist_from_mask(bad)


def test_nan_mask_raises():
    m = np.zeros((10, 10))
    m[2:5, 2:8] = 1
    m[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        recist_from_mask(m)


def test_two_pixel_lesion():
    m = np.zeros((10, 10), dtype=bool)
    m[4, 4:6] = True
    r = recist_from_mask(m)
    assert r.long_length == pytest.approx(1.0)
    assert 0 < r.short_length <= 1.0


def test_mask_dtypes_give_the_same_measurement():
    m = _ellipse_mask((80, 90), (40, 45), 12, 30, rotation=0.6)
    ref = recist_from_mask(m)
    for arr in (
        m.astype(np.uint8) * 255,
        m.astype(np.float32),
        m.astype(np.float64),
        m.astype(np.int64) * -3,
        m.astype(np.uint16),
    ):
        assert recist_from_mask(arr) == ref
    assert recist_from_mask(m.tolist()) == ref


def test_mask_spacing_is_stored():
    m = _ellipse_mask((80, 90), (40, 45), 12, 30)
    r = recist_from_mask(m, spacing=(0.7, 0.7))
    assert r.spacing == (0.7, 0.7)
    assert r.long_mm == pytest.approx(0.7 * r.long_length)


def test_mask_with_anisotropic_spacing_is_measured():
    # An oblique lesion on non-square pixels: the measurement must still be a valid Recist
    # (perpendicular in millimetres, as Recist checks it), not a ValueError.
    m = _ellipse_mask((100, 100), (50, 50), 30, 10, rotation=np.pi / 4)
    r = recist_from_mask(m, spacing=(1.0, 2.0))
    assert r.spacing == (1.0, 2.0)
    assert r.perpendicularity_error <= 15
    assert r.short_mm <= r.long_mm


def test_mask_512_timing_and_result(capsys):
    m = _ellipse_mask((512, 512), (256, 256), 150, 90, rotation=0.4)
    recist_from_mask(m)  # warm up imports
    t0 = time.perf_counter()
    r = recist_from_mask(m)
    elapsed = time.perf_counter() - t0
    assert 298 <= r.long_length <= 300.5
    assert 178 <= r.short_length <= 180.5
    with capsys.disabled():
        print(f"\nrecist_from_mask on 512x512 ({int(m.sum())} lesion px): {elapsed * 1e3:.1f} ms")


def test_diagonally_touching_pixels_are_one_lesion():
    mask = np.zeros((20, 20), bool)
    for i in range(3, 15):
        mask[i, i] = True  # a diagonal line: 4-connectivity would see 12 lesions
    r = recist_from_mask(mask)
    assert r.long_length == pytest.approx(np.hypot(11, 11))


def test_tie_rule_moves_the_crossing_to_the_middle():
    from skimage.draw import ellipse

    mask = np.zeros((100, 120), bool)
    rr, cc = ellipse(50, 60, 15, 30, shape=mask.shape)
    mask[rr, cc] = True
    middle = recist_from_mask(mask)
    first = recist_from_mask(mask, ties="first")
    assert np.hypot(*(middle.centre - (50, 60))) < 1.5
    assert np.hypot(*(first.centre - (50, 60))) > np.hypot(*(middle.centre - (50, 60)))
    assert middle.short_length == pytest.approx(first.short_length, abs=1e-6)
    with pytest.raises(ValueError, match="ties"):
        recist_from_mask(mask, ties="last")


def test_short_longer_than_long_is_judged_in_millimetres():
    # 40 px x 0.5 mm = 20 mm long axis; 20 px x 3 mm = 60 mm short axis.
    with pytest.raises(ValueError, match="longer than the long axis"):
        Recist([[10, 0], [10, 40]], [[0, 20], [20, 20]], spacing=(3.0, 0.5))


def test_shapes_mixing_2d_and_3d_lines_name_the_lesion():
    data = [np.array([[0.0, 10, 0], [0, 10, 40]]), np.array([[0.0, 20], [20, 20]])]
    with pytest.raises(ValueError, match="lesion 7: its lines mix 2D and 3D"):
        recists_from_shapes(data, {"lesion_id": [7, 7], "axis": ["long", "short"]})


def test_one_axis_order_rule_labels_unlabelled_lines_and_flags_labelled_ones():
    from napari_recist_seg.core.annotation import assign_lesions
    from napari_recist_seg.core.recist import order_axes, short_exceeds_long

    assert short_exceeds_long(10.0, 12.0) and not short_exceeds_long(10.0, 10.0)
    # 30 rows of 0.5 mm (15 mm) against 20 columns of 1 mm (20 mm): the second is longer.
    first, second = [[0, 20], [30, 20]], [[15, 10], [15, 30]]
    long_axis, short_axis, swapped = order_axes(first, second, (0.5, 1.0))
    assert swapped and np.array_equal(long_axis, second) and np.array_equal(short_axis, first)
    assert not order_axes(second, first, (0.5, 1.0))[2]
    # Drawn, unlabelled: the pairing labels them by the same rule.
    assert assign_lesions([first, second], [-1, -1], ["", ""], (0.5, 1.0))[1] == [
        "short", "long"]
    # Labelled the other way round (an edited line, a file's row): a violation, not a swap.
    with pytest.raises(ValueError, match="longer than the long axis"):
        Recist(first, second, spacing=(0.5, 1.0))
