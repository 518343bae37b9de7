"""Refining a prompted prediction with its RECIST's trimap and a random walker on the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_recist_seg.core.metrics import segmentation_metrics
from napari_recist_seg.core.pseudo_masks import pseudo_mask
from napari_recist_seg.core.recist import recist_from_mask
from napari_recist_seg.core.recist_refinement import REFINEMENTS, refine_probability
from napari_recist_seg.core.trimap import (
    BACKGROUND,
    LESION,
    recist_trimap,
    refine_trimap,
    walker_probability,
)
from napari_recist_seg.learning.inference import load_model, predict_detailed


def _lobed_lesion(shape=(96, 96)):
    """A bright lesion with a lobe between its axes (where no quarter-ellipse reaches), on a
    darker noisy background: its truth, its image, and the RECIST measured on it."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    truth = ((rr - 48) / 14.0) ** 2 + ((cc - 44) / 22.0) ** 2 <= 1
    truth |= (rr - 34) ** 2 + (cc - 58) ** 2 <= 8.0 ** 2
    rng = np.random.default_rng(0)
    image = np.where(truth, 170.0, 70.0) + rng.normal(0, 6, shape)
    image = ndimage.gaussian_filter(image, 0.8)
    return truth, image, recist_from_mask(truth)


def _dice(a, b) -> float:
    return segmentation_metrics(a, b)["dice"]


def test_the_walker_follows_the_image_where_the_quarter_ellipse_cannot():
    truth, image, recist = _lobed_lesion()
    quarter = pseudo_mask(recist, truth.shape, "quarter_ellipse")
    # A network that copies its prior: the quarter-ellipse with a soft edge.
    prior = ndimage.gaussian_filter(quarter.astype(np.float32), 2.0)
    assert abs(_dice(prior >= 0.5, truth) - _dice(quarter, truth)) < 0.02
    refined = refine_probability(prior, recist, image) >= 0.5
    assert _dice(refined, truth) > _dice(quarter, truth) + 0.02
    # The lobe, which no axis reaches, is recovered in large part.
    lobe = truth & ~quarter
    assert (refined & lobe).sum() > 0.5 * lobe.sum()


def test_the_trimap_sets_what_the_recist_guarantees_and_nothing_else():
    truth, image, recist = _lobed_lesion()
    trimap = recist_trimap(recist, truth.shape)
    for p in (np.zeros(truth.shape, np.float32), np.ones(truth.shape, np.float32),
              np.full(truth.shape, 0.3, np.float32)):
        out = refine_probability(p, recist, image, "trimap")
        assert out.dtype == np.float32 and out.shape == truth.shape
        assert (out[trimap == LESION] == 1).all() and (out[trimap == BACKGROUND] == 0).all()
        band = trimap == 2
        np.testing.assert_array_equal(out[band], p[band])
    p = np.random.default_rng(1).random(truth.shape).astype(np.float32)
    np.testing.assert_array_equal(refine_probability(p, recist, None, "none"), p)


def test_walker_probability_is_one_on_lesion_zero_on_background_and_halfway_when_flat():
    truth, image, recist = _lobed_lesion()
    trimap = recist_trimap(recist, truth.shape)
    walk = walker_probability(image, trimap)
    assert walk.dtype == np.float32 and walk.min() >= 0 and walk.max() <= 1
    assert (walk[trimap == LESION] == 1).all() and (walk[trimap == BACKGROUND] == 0).all()
    # On this image the band's lesion pixels are found and its background ones left out.
    band = trimap == 2
    assert walk[band & truth].mean() > 0.7 and walk[band & ~truth].mean() < 0.3
    flat = walker_probability(np.full(truth.shape, 5.0), trimap)
    assert set(np.unique(flat)) <= {0.0, 1.0}
    np.testing.assert_array_equal(flat >= 0.5, refine_trimap(image, trimap, "none"))


def test_bad_refinement_input_is_named():
    truth, image, recist = _lobed_lesion()
    p = np.zeros(truth.shape, np.float32)
    with pytest.raises(ValueError, match="unknown refinement 'crf'.*random_walker, trimap, none"):
        refine_probability(p, recist, image, "crf")
    with pytest.raises(ValueError, match="random_walker refinement needs the image"):
        refine_probability(p, recist, None)
    with pytest.raises(ValueError, match="image is 50 x 50 pixels but the trimap is 96 x 96"):
        refine_probability(p, recist, image[:50, :50])
    with pytest.raises(ValueError, match="probability must be 2D"):
        refine_probability(p[None], recist, image)
    with pytest.raises(ValueError, match="walker_weight must be between 0 and 1"):
        refine_probability(p, recist, image, walker_weight=1.5)
    assert REFINEMENTS[0] == "random_walker"


def test_prediction_is_refined_by_default_and_raw_on_request(tmp_path):
    """A prompted network that predicts its prior is pulled towards the lesion's own outline
    by the default refinement; ``refine="none"`` returns what the network drew, and an
    unknown refinement is refused before any work."""
    from napari_recist_seg.learning.checkpoints import save_checkpoint
    from napari_recist_seg.learning.models import build_model

    from ._learning_data import whole_preprocessing

    truth, image, recist = _lobed_lesion()
    grey = np.clip(image, 0, 255).astype(np.uint8)
    model = build_model("prompted", in_channels=1, input_size=96, prior_residual=True,
                        prior_edge="distance")
    torch.nn.init.zeros_(model.segmentation_head[0].weight)
    torch.nn.init.zeros_(model.segmentation_head[0].bias)
    run = save_checkpoint(tmp_path / "prior", model,
                          {"preprocessing": whole_preprocessing(size=96), "grouping": None}, [])
    model = load_model(run)
    raw = predict_detailed(model, grey, [recist], refine="none").mask
    refined = predict_detailed(model, grey, [recist]).mask
    quarter = pseudo_mask(recist, truth.shape, "quarter_ellipse")
    assert _dice(raw, quarter) > 0.95
    assert _dice(refined, truth) > _dice(raw, truth) + 0.02
    with pytest.raises(ValueError, match="unknown refinement 'walker'"):
        predict_detailed(model, grey, [recist], refine="walker")
