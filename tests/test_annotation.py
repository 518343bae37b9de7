"""core.annotation: pairing drawn lines into lesions, checking them, and the fixes."""

import numpy as np
import pytest

from napari_recist_seg.core.annotation import (
    assign_lesions,
    describe_lesions,
    is_stray_line,
    line_lengths_mm,
    perpendicular_short_axis,
    recists_from_labels,
    segment_distance,
)
from napari_recist_seg.core.recist import Recist

# A lesion drawn on rows 0..20, cols 10..50: a horizontal long axis, a vertical short one.
LONG = [[10.0, 10.0], [10.0, 50.0]]
SHORT = [[0.0, 30.0], [20.0, 30.0]]


def _new(data):
    """Pairing of lines none of which is in a lesion yet."""
    return assign_lesions(data, [-1] * len(data), [""] * len(data))


def _on_slice(z, line):
    return np.column_stack([np.full(2, float(z)), np.asarray(line, dtype=float)])


def _angle_mm(a, b, spacing):
    d = (np.asarray(a[1]) - a[0]) * spacing
    e = (np.asarray(b[1]) - b[0]) * spacing
    return np.degrees(np.arccos(abs(d @ e) / (np.linalg.norm(d) * np.linalg.norm(e))))


# -- pairing ----------------------------------------------------------------------------------
def test_long_then_short_make_one_lesion():
    assert _new([LONG, SHORT]) == ([0, 0], ["long", "short"])


def test_short_axis_drawn_first_is_still_the_short_axis():
    assert _new([SHORT, LONG]) == ([0, 0], ["short", "long"])


def test_long_axis_is_the_longer_in_mm_not_in_pixels():
    along_rows = [[0.0, 20.0], [30.0, 20.0]]  # 30 px of 0.5 mm: 15 mm
    along_cols = [[15.0, 10.0], [15.0, 30.0]]  # 20 px of 1 mm: 20 mm
    ids, axes = assign_lesions([along_rows, along_cols], [-1, -1], ["", ""], (0.5, 1.0))
    assert ids == [0, 0]
    assert axes == ["short", "long"]


def test_far_line_starts_a_new_lesion_and_a_near_one_finds_its_partner():
    far = [[100.0, 100.0], [100.0, 140.0]]
    # The short axis comes after the far line, yet pairs with the lesion it crosses.
    assert _new([LONG, far, SHORT]) == ([0, 1, 0], ["long", "long", "short"])


def test_a_click_without_a_drag_never_takes_the_place_of_an_axis():
    # napari's line tool leaves a line of about a pixel on a stray click.
    click = [[30.0, 30.0], [30.5, 30.8]]
    # Drawn before a lesion: the lesion's two axes still pair with each other.
    assert _new([click, LONG, SHORT]) == ([0, 1, 1], ["long", "long", "short"])
    # Drawn between its axes: the short axis still finds its long axis.
    assert _new([LONG, click, SHORT]) == ([0, 1, 0], ["long", "long", "short"])
    # Already a lesion of its own when the next line comes (as pairing runs at each
    # release): the next line still starts a lesion.
    assert assign_lesions([click, LONG], [0, -1], ["long", ""]) == ([0, 1], ["long", "long"])
    # The table says what it is.
    infos = describe_lesions([LONG, click, SHORT], [0, 1, 0], ["long", "long", "short"])
    assert infos[0].ok
    assert infos[1].problem.startswith("a click rather than a drawn axis")
    # The line napari's tool leaves on a click, zoomed out: equal steps down and right,
    # 10 px long. It never pairs either, though an axis as long would.
    zoomed_out = [[18.0, 30.0], [25.142853, 37.142853]]
    assert _new([zoomed_out, LONG, SHORT]) == ([0, 1, 1], ["long", "long", "short"])
    assert _new([LONG, zoomed_out, SHORT]) == ([0, 1, 0], ["long", "long", "short"])
    tilted = [[18.0, 30.0], [25.142853, 37.2]]  # drawn: steps not equal
    assert _new([LONG, tilted])[0] == [0, 0]
    # A short axis of 2 px (a small lesion at a coarse zoom) still pairs.
    small_long, small_short = [[50.0, 50.0], [50.0, 54.0]], [[49.0, 52.0], [51.0, 52.0]]
    assert _new([small_long, small_short]) == ([0, 0], ["long", "short"])


def test_lines_on_different_slices_do_not_pair():
    a = _on_slice(2, LONG)
    b = _on_slice(3, SHORT)  # right over lesion 0 in plane, but on the next slice
    c = _on_slice(2, SHORT)
    ids, axes = _new([a, b, c])
    assert ids == [0, 1, 0]
    assert axes == ["long", "long", "short"]


def test_assigned_lines_keep_their_lesion_and_copies_start_new_ones():
    copy_far = np.asarray(LONG) + [200.0, 0.0]
    new_far = np.asarray(LONG) + [400.0, 0.0]
    ids, axes = assign_lesions(
        [LONG, SHORT, copy_far, new_far], [5, 5, 5, -1], ["long", "short", "long", ""]
    )
    assert ids == [5, 5, 6, 7]
    assert axes == ["long", "short", "long", "long"]


def _pair_by_rule(data):
    """The pairing rule written out plainly: each new line against every waiting lesion."""

    def length(p):
        return np.linalg.norm(p[1, 1:] - p[0, 1:])

    ids, axes, lesions = [], [], []
    for i, p in enumerate(np.asarray(d, dtype=float) for d in data):
        flat = p[0, 0] == p[1, 0]
        best = None
        for lid, members in enumerate(lesions):
            j, q = members[0]
            if len(members) != 1 or not flat or q[0, 0] != q[1, 0] or q[0, 0] != p[0, 0]:
                continue
            if is_stray_line(p) or is_stray_line(q):  # a click, not an axis
                continue
            near = segment_distance(p[:, 1:], q[:, 1:]) <= 0.5 * max(length(p), length(q))
            if near and (best is None or j > best[1]):
                best = (lid, j)
        if best is None:
            ids.append(len(lesions))
            axes.append("long")
            lesions.append([(i, p)])
            continue
        lid, j = best
        longer = length(p) > length(lesions[lid][0][1])
        ids.append(lid)
        axes.append("long" if longer else "short")
        axes[j] = "short" if longer else "long"
        lesions[lid].append((i, p))
    return ids, axes


def test_pairing_many_new_lines_follows_the_rule_line_by_line():
    rng = np.random.default_rng(3)
    data = []
    for _ in range(400):
        z = float(rng.integers(0, 4))
        start = rng.uniform(0, 60, 2)
        end = start + rng.uniform(-15, 15, 2)
        # A few lines run across slices; they never pair.
        z_end = z + 1 if rng.random() < 0.05 else z
        data.append(np.array([[z, *start], [z_end, *end]]))
    ids, axes = _new(data)
    assert (ids, axes) == _pair_by_rule(data)
    assert 50 < len(set(ids)) < 400  # the data has both pairs and lone lines


def test_shapes_other_than_lines_are_left_out():
    rectangle = [[0.0, 0.0], [0.0, 5.0], [5.0, 5.0], [5.0, 0.0]]
    ids, axes = assign_lesions(
        [LONG, rectangle, SHORT], [-1, 3, -1], ["", "long", ""],
        shape_types=["line", "rectangle", "line"],
    )
    assert ids == [0, -1, 0]
    assert axes == ["long", "", "short"]


def test_pairing_rejects_columns_of_the_wrong_length():
    with pytest.raises(ValueError, match="lesion_ids"):
        assign_lesions([LONG, SHORT], [-1], ["", ""])


def test_segment_distance():
    assert segment_distance(LONG, SHORT) == 0.0
    assert segment_distance([[0, 0], [0, 10]], [[3, 0], [3, 10]]) == pytest.approx(3.0)
    # Collinear, apart: the gap between the facing endpoints.
    assert segment_distance([[0, 0], [0, 10]], [[0, 14], [0, 20]]) == pytest.approx(4.0)


def test_line_lengths_mm_in_plane_with_per_line_spacing():
    data = [np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[7.0, 0.0, 0.0], [7.0, 6.0, 8.0]])]
    assert line_lengths_mm(data, (1.0, 1.0)) == pytest.approx([5.0, 10.0])
    assert line_lengths_mm(data, (2.0, 1.0)) == pytest.approx([np.hypot(6, 4), np.hypot(12, 8)])
    per_line = [[1.0, 1.0], [0.5, 0.5]]
    assert line_lengths_mm(data, (9.0, 9.0), per_line) == pytest.approx([5.0, 5.0])
    assert line_lengths_mm([], (1.0, 1.0)).shape == (0,)


# -- make perpendicular -----------------------------------------------------------------------
def test_perpendicular_short_axis_keeps_length_in_mm_and_midpoint():
    spacing = np.array([0.5, 0.8])
    long_axis = np.array([[10.0, 10.0], [40.0, 50.0]])
    short_axis = np.array([[14.0, 38.0], [34.0, 26.0]])
    assert abs(_angle_mm(long_axis, short_axis, spacing) - 90.0) > 10  # really off

    fixed = perpendicular_short_axis(long_axis, short_axis, spacing)

    assert fixed.shape == (2, 2)
    assert _angle_mm(long_axis, fixed, spacing) == pytest.approx(90.0, abs=1e-9)
    assert fixed.mean(axis=0) == pytest.approx(short_axis.mean(axis=0))
    short_mm = line_lengths_mm([short_axis], spacing)
    assert line_lengths_mm([fixed], spacing) == pytest.approx(short_mm)
    # Its endpoints stay in the order drawn rather than swapping.
    assert ((fixed[1] - fixed[0]) * spacing) @ ((short_axis[1] - short_axis[0]) * spacing) > 0
    fixed_recist = Recist(long_axis, fixed, spacing, max_perpendicularity_error=1e-6)
    assert fixed_recist.perpendicularity_error == pytest.approx(0.0, abs=1e-6)


def test_perpendicular_short_axis_needs_a_long_axis():
    with pytest.raises(ValueError, match="zero length"):
        perpendicular_short_axis([[5.0, 5.0], [5.0, 5.0]], SHORT)


# -- RECIST from labels -----------------------------------------------------------------------
def test_recists_from_labels_2d_one_per_label():
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[5:15, 5:45] = 1  # 10 rows by 40 columns
    rr, cc = np.mgrid[:40, :60]
    labels[(rr - 28) ** 2 + (cc - 30) ** 2 <= 36] = 2
    labels[38, 57] = 3  # a single pixel cannot be measured

    recists, values, slices, skipped = recists_from_labels(labels, spacing=(0.5, 1.0))

    assert values == [1, 2]
    assert slices is None
    assert len(skipped) == 1 and skipped[0].startswith("label 3:")
    for recist, value in zip(recists, values):
        assert recist.spacing == (0.5, 1.0)
        assert labels[tuple(np.round(recist.centre).astype(int))] == value
    # Rectangle: the diagonal between corner pixel centres, in mm.
    assert recists[0].long_mm == pytest.approx(np.hypot(9 * 0.5, 39 * 1.0))
    assert recists[1].long_length == pytest.approx(12.0, abs=0.5)


def test_recists_from_labels_3d_measures_the_key_slice():
    labels = np.zeros((5, 30, 40), dtype=np.uint8)
    labels[1, 10:14, 10:14] = 4
    labels[2, 5:15, 5:25] = 4  # largest area: the key slice
    labels[3, 8:14, 8:14] = 4

    recists, values, slices, skipped = recists_from_labels(labels)

    assert values == [4] and slices == [2] and skipped == []
    assert recists[0].long_length == pytest.approx(np.hypot(9, 19))


def test_recists_from_labels_rejects_other_dimensions():
    with pytest.raises(ValueError, match="2D or 3D"):
        recists_from_labels(np.zeros((2, 2, 2, 2), dtype=int))


# -- describing lesions -----------------------------------------------------------------------
def test_describe_lesions_measures_and_flags_each_lesion():
    lone = np.asarray(LONG) + [50.0, 0.0]
    slanted_long = np.asarray(LONG) + [90.0, 0.0]
    slanted_short = [[90.0, 20.0], [110.0, 40.0]]  # 45 degrees off, crossing the long axis
    data = [LONG, SHORT, lone, slanted_long, slanted_short, LONG]
    ids = [0, 0, 1, 2, 2, -1]
    axes = ["long", "short", "long", "long", "short", ""]

    infos = describe_lesions(data, ids, axes, spacing=(0.5, 0.5))

    assert [i.lesion_id for i in infos] == [0, 1, 2]
    valid, incomplete, skew = infos
    assert valid.ok and valid.status == "ok" and isinstance(valid.recist, Recist)
    assert (valid.long_px, valid.short_px) == pytest.approx((40.0, 20.0))
    assert (valid.long_mm, valid.short_mm) == pytest.approx((20.0, 10.0))
    assert valid.perpendicularity_error == pytest.approx(0.0)
    assert valid.centre == pytest.approx([10.0, 30.0])
    assert valid.line_indices == [0, 1]

    assert not incomplete.ok
    assert incomplete.problem == "incomplete: draw the short axis"
    assert incomplete.short_index is None and np.isnan(incomplete.short_mm)

    assert not skew.ok and skew.recist is None
    assert "45.0 degrees from perpendicular" in skew.problem
    assert not skew.problem.startswith("lesion")  # the table names the lesion itself
    assert skew.perpendicularity_error == pytest.approx(45.0)


def test_describe_lesions_other_problems():
    data = [SHORT, LONG, LONG, SHORT, _on_slice(1, LONG), _on_slice(2, SHORT)]
    ids = [0, 1, 1, 1, 2, 2]
    axes = ["short", "long", "long", "short", "long", "short"]

    no_long, crowded, two_slices = describe_lesions(data, ids, axes)

    assert no_long.problem == "incomplete: no long axis"
    assert crowded.problem == "more than two lines share this lesion id"
    assert two_slices.problem == "its two axes are not on the same slice"
    assert two_slices.slice == "mixed"


def test_describe_lesions_3d_lesion_has_its_slice_and_centre():
    (info,) = describe_lesions([_on_slice(3, LONG), _on_slice(3, SHORT)], [7, 7], ["long", "short"])
    assert info.ok and info.slice == 3
    assert info.centre == pytest.approx([3.0, 10.0, 30.0])


def test_describe_lesions_uses_each_lesions_own_spacing():
    far_long, far_short = np.asarray(LONG) + 100.0, np.asarray(SHORT) + 100.0
    infos = describe_lesions(
        [LONG, SHORT, far_long, far_short], [0, 0, 1, 1], ["long", "short"] * 2,
        spacing=(9.0, 9.0), per_line_spacing=[[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 2,
    )
    assert [i.long_mm for i in infos] == pytest.approx([40.0, 80.0])


def test_describe_lesions_cache_reuses_only_unchanged_lesions():
    far_long, far_short = np.asarray(LONG) + 100.0, np.asarray(SHORT) + 100.0
    data = [np.asarray(LONG), np.asarray(SHORT), far_long, far_short]
    ids, axes = [0, 0, 1, 1], ["long", "short"] * 2
    cache: dict = {}
    first = describe_lesions(data, ids, axes, cache=cache)
    moved = [d.copy() for d in data]
    moved[3] = moved[3] + [0.0, 5.0]
    second = describe_lesions(moved, ids, axes, cache=cache)
    assert second[0] is first[0]
    assert second[1] is not first[1]
    assert second[1].centre == pytest.approx([110.0, 135.0])
    # Lines drawn after the others leave those reusable; the new lesion is measured.
    third = describe_lesions([*moved, np.asarray(LONG) + 50.0], [*ids, 2], [*axes, "long"],
                             cache=cache)
    assert third[0] is first[0] and third[1] is second[1]
    assert third[2].problem.startswith("incomplete")
    # Lesion 0's lines deleted: lesion 1's lines move up, so it is measured again.
    fourth = describe_lesions(moved[2:], ids[2:], axes[2:], cache=cache)
    assert [info.line_indices for info in fourth] == [[0, 1]]
    assert fourth[0].centre == pytest.approx(second[1].centre)
    # Another angle tolerance: every lesion is checked again.
    fifth = describe_lesions(moved[2:], ids[2:], axes[2:], tolerance=5.0, cache=cache)
    assert fifth[0] is not fourth[0]


def test_fill_line_spacing_takes_the_slice_then_a_neighbour_then_the_fallback():
    from napari_recist_seg.core.annotation import fill_line_spacing

    data = [_on_slice(0, LONG), _on_slice(1, LONG), _on_slice(1, SHORT), _on_slice(2, LONG)]
    given = [[0.7, 0.7], [np.nan, np.nan], [0.3, 0.3], [np.nan, 0.0]]
    filled, missing = fill_line_spacing(data, given, {0: (9.0, 9.0)}, fallback=(1.0, 2.0))
    np.testing.assert_allclose(filled, [[0.7, 0.7], [0.3, 0.3], [0.3, 0.3], [1.0, 2.0]])
    assert missing.tolist() == [False, True, False, True]
    filled, _ = fill_line_spacing(data, given, {1: (0.5, 0.5), 2: (0.25, 0.25)})
    np.testing.assert_allclose(filled[[1, 3]], [[0.5, 0.5], [0.25, 0.25]])


def test_describe_lesions_labels_lengths_px_where_no_pixel_size_is_known():
    longer_short = [[-20.0, 30.0], [40.0, 30.0]]  # 60 px against the 40 px long axis
    (info,) = describe_lesions([LONG, longer_short], [0, 0], ["long", "short"], unit="px")
    assert "longer than the long axis" in info.problem
    assert " px" in info.problem and " mm" not in info.problem
    with pytest.raises(ValueError, match="unit"):
        describe_lesions([LONG, SHORT], [0, 0], ["long", "short"], unit="cm")


# -- lines across slices (drawn in a view whose plane is not axial) --------------------------
# Drawn with the axes rolled (slices by rows shown): one end on slice 20, the other on 24.
ACROSS = [[20.0, 65.0, 120.0], [24.0, 65.0, 120.0]]  # straight across slices, no in-plane step
OBLIQUE = [[20.0, 65.0, 120.0], [24.0, 115.0, 120.0]]  # across slices and along the rows


def test_a_line_across_slices_is_not_measured_in_the_plane_nor_a_click():
    on_slice = _on_slice(22, [[65.0, 120.0], [115.0, 120.0]])
    lengths = line_lengths_mm([ACROSS, OBLIQUE, on_slice], (0.7, 0.7))
    # Its last two coordinates alone would read 0.0 mm and 35.0 mm.
    assert np.isnan(lengths[:2]).all()
    assert lengths[2] == pytest.approx(35.0)
    # Shapes of different sizes take the other path through the lengths.
    mixed_sizes = line_lengths_mm([ACROSS, [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]], (1.0, 1.0))
    assert np.isnan(mixed_sizes[0]) and mixed_sizes[1] == pytest.approx(2.0)
    assert not is_stray_line(ACROSS)
    assert is_stray_line(_on_slice(22, [[65.0, 120.0], [65.5, 120.0]]))


def test_lesions_with_a_line_across_slices_say_so_and_do_not_pair():
    from napari_recist_seg.core.annotation import ACROSS_SLICES

    short = _on_slice(22, [[80.0, 120.0], [100.0, 120.0]])
    long_on_slice = _on_slice(22, [[90.0, 95.0], [90.0, 145.0]])
    # Each line across slices crosses an axis drawn on slice 22 at its middle: near enough to
    # pair, were it on that slice.
    ids, axes = _new([OBLIQUE, short, long_on_slice, ACROSS])
    assert ids == [0, 1, 1, 2] and axes == ["long", "short", "long", "long"]

    oblique, valid, alone = describe_lesions(
        [OBLIQUE, short, long_on_slice, ACROSS], ids, axes, spacing=(0.7, 0.7))
    assert valid.ok
    for info in (oblique, alone):
        assert info.problem == ACROSS_SLICES and not info.ok
        assert "click" not in info.status and info.slice == "mixed"
        assert np.isnan([info.long_mm, info.long_px]).all()

    # Paired by a file's lesion ids: the line across slices is the problem, not the slices.
    (paired,) = describe_lesions([OBLIQUE, short], [4, 4], ["long", "short"], (0.7, 0.7))
    assert paired.problem == ACROSS_SLICES
    assert np.isnan(paired.long_mm) and paired.short_mm == pytest.approx(14.0)
    assert paired.recist is None and np.isnan(paired.perpendicularity_error)
