"""Equity scaling, AUC/ES-AUC, fairness differences and statistics on hand-computed examples."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import torch

from fairdiffusion.evaluate import equity, images, quality, semantic, stats
from fairdiffusion.errors import FairDiffError


def test_equity_scaling_higher_and_lower_is_better():
    # AUC 0.8, groups 0.7 / 0.9: disparity 0.2 -> 0.8 / 1.2
    assert equity.equity_scaled(0.8, [0.7, 0.9], alpha=1.0) == pytest.approx(0.8 / 1.2)
    # FID 10, groups 8 / 14: disparity 6 -> 10 * (1 + 0.5 * 6) = 40 (worse than 10)
    assert equity.equity_scaled(10.0, [8.0, 14.0], alpha=0.5, higher_is_better=False) == pytest.approx(40.0)
    # no disparity, or alpha 0: unchanged
    assert equity.equity_scaled(3.0, [3.0, 3.0], alpha=1.0) == 3.0
    assert equity.equity_scaled(3.0, [1.0, 9.0], alpha=0.0, higher_is_better=False) == 3.0
    # A negative (unbiased) KID: disparity still makes it worse, never better.
    even = equity.equity_scaled(-0.01, [-0.01, -0.01], higher_is_better=False)
    uneven = equity.equity_scaled(-0.01, [-0.03, 0.01], higher_is_better=False)
    assert even == -0.01 and uneven == pytest.approx(-0.01 + 0.01 * 0.04) and uneven > even
    assert equity.gap([0.7, 0.9, 0.75]) == pytest.approx(0.2)
    assert math.isnan(equity.gap([]))


def test_auc_binary_multiclass_and_single_class():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    assert semantic.auc(y, np.stack([1 - p1, p1], axis=1)) == pytest.approx(0.75)  # 3 of 4 pairs
    rng = np.random.default_rng(0)
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet(np.ones(3), 60)
    assert semantic.auc(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    assert math.isnan(semantic.auc(np.array([1, 1, 1]), np.full((3, 2), 0.5)))


def test_rank_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    # probabilities rounded to one decimal: many tied scores within and across classes
    p = np.round(rng.dirichlet(np.ones(3), 200), 1)
    reference = [roc_auc_score(y == c, p[:, c]) for c in range(3)]
    assert [semantic.binary_auc(y == c, p[:, c]) for c in range(3)] == pytest.approx(reference)
    assert semantic.auc(y, p) == pytest.approx(np.mean(reference))
    assert semantic.binary_auc(np.array([0, 0, 1, 1], bool), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    # a 0/1 integer target is a boolean one, not row indices
    assert semantic.binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0


def test_auc_refuses_non_finite_probabilities():
    with pytest.raises(FairDiffError, match="NaN or inf"):
        semantic.auc(np.array([0, 1, 0, 1]), np.array([[0.5, 0.5], [np.nan, np.nan]] * 2))


def test_semantic_rows_es_auc_and_single_class_group(caplog):
    # group A: perfect ranking (AUC 1); group B: 1 of 4 pairs right (AUC 0.25); group C: one class only
    test = pd.DataFrame({"race": ["A"] * 4 + ["B"] * 4 + ["C"] * 2,
                         "tumour": ["no", "no", "yes", "yes"] * 2 + ["yes", "yes"]})
    p_yes = np.array([0.1, 0.2, 0.8, 0.9, 0.7, 0.6, 0.65, 0.3, 0.5, 0.55])
    probs = {"tumour": np.stack([1 - p_yes, p_yes], axis=1)}
    with caplog.at_level(logging.WARNING):
        rows = pd.DataFrame(semantic.evaluate(test, probs, {"tumour": ["no", "yes"]},
                                              {"race": ["A", "B", "C"]}, 1.0, 20, 0, {}))
    assert "race=C" in caplog.text
    auc = rows[rows.metric == "AUC"].set_index("group")["value"]
    assert set(auc.index) == {"all", "A", "B"}
    assert auc["A"] == pytest.approx(1.0) and auc["B"] == pytest.approx(0.25)
    overall = roc_auc_score(test["tumour"] == "yes", p_yes)
    assert auc["all"] == pytest.approx(overall)
    es = rows[rows.metric == "ES-AUC"]["value"].item()
    assert es == pytest.approx(overall / (1 + abs(overall - 1.0) + abs(overall - 0.25)))


def test_demographic_parity_and_equalized_odds():
    a, b = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool), np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    # P(pred=1): A 3/4, B 1/4 -> 0.5; TPR A 1, B 0.5; FPR A 0.5, B 0 -> EOD 0.5
    assert semantic.demographic_parity_difference(pred, [a, b], 2) == pytest.approx(0.5)
    assert semantic.equalized_odds_difference(y, pred, [a, b], 2) == pytest.approx(0.5)
    pred_fair = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    assert semantic.demographic_parity_difference(pred_fair, [a, b], 2) == 0.0
    # three classes: P(pred=2) is 1/4 in A and 3/4 in B -> 0.5 is the largest class gap
    pred3 = np.array([0, 1, 2, 1, 2, 2, 2, 0])
    assert semantic.demographic_parity_difference(pred3, [a, b], 3) == pytest.approx(0.5)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    x = (np.arange(200) % 4 == 0).astype(float)
    lo, hi = stats.bootstrap_mean_ci(x, 500, seed=1)
    assert (lo, hi) == stats.bootstrap_mean_ci(x, 500, seed=1)
    assert lo < x.mean() < hi and hi - lo < 0.2
    lo2, hi2 = stats.bootstrap_ci(lambda i: x[i].mean(), len(x), 500, seed=1)
    assert (lo2, hi2) == pytest.approx((lo, hi))
    assert all(math.isnan(v) for v in stats.bootstrap_mean_ci(x, 0))


def test_paired_seed_test_and_image_bootstrap():
    base = np.array([10.0, 12.0, 11.0, 13.0, 12.5])
    arm = base - np.array([1.0, 1.5, 0.5, 1.2, 0.8])
    result = stats.paired_seed_test(arm, base)
    assert result["sign"] == -1 and result["mean_diff"] == pytest.approx(-1.0)
    assert result["sign_pvalue"] == pytest.approx(2 * 0.5 ** 5)  # all 5 differences negative
    assert result["t_pvalue"] < 0.01
    assert math.isnan(stats.paired_seed_test([1.0], [2.0])["t_pvalue"])

    rng = np.random.default_rng(0)
    right_base = rng.random(300) < 0.6
    right_arm = right_base | (rng.random(300) < 0.3)  # strictly more correct images
    res = stats.paired_bootstrap(lambda i: right_arm[i].mean(), lambda i: right_base[i].mean(), 300, 400, 0)
    assert res["sign"] == 1 and 0 < res["lower"] <= res["diff"] <= res["upper"] and res["pvalue"] < 0.01


def test_seed_summary():
    rows = []
    for method, shift in (("baseline", 0.0), ("fairdiffusion", -2.0)):
        for seed in range(3):
            rows.append({"dataset": "d", "method": method, "seed": seed, "metric": "FID", "task": "",
                         "attribute": "all", "group": "all", "extractor": "x", "value": 10 + seed + shift})
    frame = pd.DataFrame(rows)
    summary = stats.seed_summary(frame).set_index("method")
    assert summary.loc["baseline", "mean"] == pytest.approx(11.0)
    assert summary.loc["baseline", "std"] == pytest.approx(1.0)
    assert summary.loc["fairdiffusion", "n_seeds"] == 3


def test_torchvision_backbone_from_local_weights(tmp_path):
    """ImageNet weights arrive as a torchvision .pth state dict, loaded weights-only."""
    import torch
    import torchvision

    from fairdiffusion.evaluate import cnn

    settings = {"backbone": "efficientnet_b1"}
    with pytest.raises(FairDiffError, match="evaluate.classifier.backbone_weights.*missing.pth"):
        cnn.build({"glaucoma": 2}, {**settings, "backbone_weights": str(tmp_path / "missing.pth")},
                  seed=0, size=32)
    torch.manual_seed(1)
    source = torchvision.models.efficientnet_b1()
    torch.save(source.state_dict(), tmp_path / "b1.pth")
    model = cnn.build({"glaucoma": 2, "vision_loss": 4},
                      {**settings, "backbone_weights": str(tmp_path / "b1.pth")}, seed=0, size=32)
    assert torch.equal(model.body.features[0][0].weight, source.features[0][0].weight)
    assert model.heads["glaucoma"].bias is None  # the authors' EfficientNet head
    features, logits = model.eval()(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 1280) and logits["vision_loss"].shape == (2, 4)
    with pytest.raises(FairDiffError, match="b1.pth is not a state dict of vit_b_16 at 32 px"):
        cnn.build({"glaucoma": 2}, {"backbone": "vit_b_16",
                                    "backbone_weights": str(tmp_path / "b1.pth")}, seed=0, size=32)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(FairDiffError, match="pickled.pth is not a plain state dict"):
        cnn.load_state(str(tmp_path / "pickled.pth"), "evaluate.classifier.backbone_weights")
    with pytest.raises(FairDiffError, match="evaluate.classifier.backbone.*resnet18"):
        cnn.build({"glaucoma": 2}, {"backbone": "resnet18"}, seed=0, size=32)


def _features(n, dim, seed, shift=0.0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_mifid_equals_torchmetrics_on_the_same_features(shift):
    from torchmetrics.image.mifid import MemorizationInformedFrechetInceptionDistance, _mifid_compute

    real, generated, train = _features(300, 16, 0), _features(250, 16, 1, shift), _features(400, 16, 2)
    # torchmetrics' metric (one real set for FID and the memorization term), features as images
    metric = MemorizationInformedFrechetInceptionDistance(feature=torch.nn.Identity())
    metric.update(real, real=True)
    metric.update(generated, real=False)
    assert quality.mifid(generated, real, real) == pytest.approx(metric.compute().item(), rel=1e-6)
    # the training split as the memorization reference: torchmetrics' own compute on it
    expected = _mifid_compute(real.mean(0), torch.cov(real.T), train, generated.mean(0),
                              torch.cov(generated.T), generated).item()
    assert quality.mifid(generated, real, train) == pytest.approx(expected, rel=1e-6)
    # a generator that copies the training images is penalised: a distance < eps divides FID
    copies = train + 0.05 * _features(400, 16, 5)
    distance = quality.memorization_distance(train, copies)
    fid = quality.fid_batch(copies, real, np.arange(400)[None], np.arange(300)[None])[0]
    assert distance < quality.MIFID_EPS
    assert quality.mifid(copies, real, train) == pytest.approx(fid / distance) and distance < 0.01
    # torchmetrics' orientation: each reference row's nearest generated row, so copying a
    # fraction of the training set leaves the mean distance above eps (no penalty)
    assert quality.memorization_distance(train, copies[:100]) == 1.0


def test_fid_infinity_removes_the_small_sample_bias():
    # Same Gaussian on both sides: the true FID is 0, FID of 60 images is far above it. With the
    # second side shifted by 1 in one dimension the true FID is 1.
    rng = np.random.default_rng(0)
    for shift, truth in ((0.0, 0.0), (1.0, 1.0)):
        gen = _features(120, 8, 3)
        real = _features(120, 8, 4)
        real[:, 0] += shift
        raw = quality.fid_batch(gen, real, np.arange(60)[None], np.arange(60)[None])[0]
        value, lower, upper = quality.fid_infinity(gen, real, 20, rng)
        assert abs(value - truth) < 0.4 * abs(raw - truth), (shift, value, raw)
        assert lower <= upper


def test_draws_are_subsets_without_replacement():
    index = quality.draw_indices(30, 12, 50, np.random.default_rng(0))
    assert index.shape == (50, 12)
    assert all(len(set(row)) == 12 for row in index) and index.max() < 30
    again = quality.draw_indices(30, 12, 50, np.random.default_rng(0))
    assert (index == again).all() and len({tuple(r) for r in index}) > 1


def test_metric_directions_have_one_owner():
    from fairdiffusion.report import metrics

    assert metrics.direction is equity.direction
    lower = ["FID", "FID-raw", "FID-inf", "ES-FID", "ES-FID-raw", "ES-KID", "MiFID", "KID-raw",
             "IS-gap", "IS-raw-gap", "DPD", "EOD"]
    higher = ["IS", "IS-raw", "ES-IS-raw", "precision-raw", "recall", "F-score", "AUC", "ES-AUC"]
    assert {equity.direction(m) for m in lower} == {"lower"}
    assert {equity.direction(m) for m in higher} == {"higher"}
    assert equity.direction("novelty") is None and equity.direction("FID-rawish") is None
    with pytest.raises(ValueError, match="novelty"):
        equity.higher_is_better("novelty")


def test_jpeg_round_trip_changes_pixels_like_a_saved_jpeg(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    out = images.jpeg_round_trip(array)
    assert out.shape == array.shape and out.dtype == np.uint8 and (out != array).any()
    Image.fromarray(array[1]).save(tmp_path / "one.jpg")  # the authors' save: PIL's defaults
    assert (np.asarray(Image.open(tmp_path / "one.jpg")) == out[1]).all()


@pytest.mark.parametrize("degrees", [-90, 90, 180, 30])
def test_undo_rotation_returns_the_data_stage_image_upright(degrees):
    """The data stage turns each image by options.rotate (nearest neighbour, same canvas);
    evaluation turns it back, as the authors' PIL rotate(90) after their -90 does: for
    multiples of 90 exactly the unrotated image, for other angles PIL's inverse turn."""
    from PIL import Image

    from fairdiffusion.data import images as data_images

    rng = np.random.default_rng(1)
    source = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    turned = data_images.convert(source, 16, data_images.Preprocess(rotate=degrees,
                                                                     interpolation="bilinear"))
    upright = data_images.convert(source, 16, data_images.Preprocess(interpolation="bilinear"))
    back = images.undo_rotation(np.asarray(turned)[None], degrees)[0]
    if degrees % 90 == 0:
        assert not (np.asarray(turned) == np.asarray(upright)).all()
        assert (back == np.asarray(upright)).all()
    else:
        assert (back == np.asarray(turned.rotate(-degrees))).all()
    if degrees == -90:   # the authors' evaluation turn
        assert (back == np.asarray(turned.rotate(90))).all()
