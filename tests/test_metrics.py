"""Metrics against scikit-learn, the patient bootstrap, and DeLong's test against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from liverphase.evaluate.metrics import (
    auc_score,
    binary_metrics,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    roc_at,
    roc_points,
)
from liverphase.evaluate.stats import (
    CI,
    bootstrap_ci,
    bootstrap_many,
    bootstrap_roc_band,
    delong_ci,
    delong_covariance,
    delong_test,
    mean_ci,
    patient_resamples,
)


def _binary_data(seed: int, n: int = 150, shift: float = 1.0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    score = 1 / (1 + np.exp(-(shift * y + rng.normal(0, 1, n) - 0.5)))
    if ties:
        score = np.round(score, 1)
    return y, score


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.3), (2, 0.7), (3, 0.5)])
def test_binary_metrics_match_sklearn(seed, threshold):
    y, s = _binary_data(seed, ties=seed == 3)
    pred = (s >= threshold).astype(int)
    m = binary_metrics(y, s, threshold)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["npv"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_npv_and_friends_by_hand():
    # Confusion matrix: tp=3, fn=1, fp=2, tn=4.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.1, 0.2, 0.3, 0.4])
    m = binary_metrics(y, s)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["acc"] == pytest.approx(7 / 10)


def test_classification_metrics_binary_with_positive_index_and_calibration():
    y, s = _binary_data(4)
    probs = np.c_[1 - s, s]
    m = classification_metrics(y, probs, ["HCC", "ICC"], positive=1)
    assert all(type(v) is float for v in m.values())
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, s))
    # Positive = column 0: everything is computed for class 0 as the positive class.
    m0 = classification_metrics(y, probs, ["HCC", "ICC"], positive=0)
    pred0 = (probs[:, 0] >= 0.5).astype(int)
    assert m0["auc"] == pytest.approx(skm.roc_auc_score(1 - y, probs[:, 0]))
    assert m0["sensitivity"] == pytest.approx(skm.recall_score(1 - y, pred0))
    assert m0["brier"] == pytest.approx(m["brier"])


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(5)
    n, k = 300, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    names = ["F0", "F1", "F2", "F3"]
    m = classification_metrics(y, probs, names)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["f1_kappa_mean"] == pytest.approx((m["f1"] + m["kappa"]) / 2)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, probs))
    assert m["auc_F2"] == pytest.approx(skm.roc_auc_score(y == 2, probs[:, 2]))


def test_undefined_metrics_are_nan_not_errors():
    assert np.isnan(auc_score(np.ones(5), np.linspace(0, 1, 5)))
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(m["sensitivity"]) and np.isnan(m["ppv"]) and m["specificity"] == 1.0
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"])


def test_ece_hand_case_and_brier():
    # Bin (0.5, 0.6]: confidences 0.6, 0.6 with one correct → |0.5 − 0.6| · 2/4.
    # Bin (0.9, 1.0]: confidences 0.95, 0.95, both correct → |1 − 0.95| · 2/4.
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.95, 0.05], [0.05, 0.95]])
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.05 + 0.025)
    assert brier_score(y, probs) == pytest.approx(np.mean((probs[:, 1] - y) ** 2))
    perfect = np.eye(2)[y]
    assert expected_calibration_error(y, perfect) == 0.0 and brier_score(y, perfect) == 0.0


def test_roc_points_match_sklearn_and_interpolation():
    y, s = _binary_data(6, ties=True)
    fpr, tpr = roc_points(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    # Trapezoid area under the interpolated curve on a fine grid ≈ AUC.
    grid = np.linspace(0, 1, 20001)
    assert np.trapezoid(roc_at(fpr, tpr, grid), grid) == pytest.approx(auc_score(y, s), abs=1e-3)
    assert roc_at(np.array([0, 0, 1.0]), np.array([0, 0.5, 1.0]), np.array([0.0, 0.5])) == (
        pytest.approx([0.5, 0.75])
    )


# ---------------------------------------------------------------- bootstrap over patients


def _patients(n_patients: int, seed: int, per: int = 2):
    """Cohort with `per` cases per patient; labels per patient, scores noisy."""
    rng = np.random.default_rng(seed)
    y_pat = (rng.random(n_patients) < 0.5).astype(int)
    y = np.repeat(y_pat, per)
    groups = np.repeat([f"p{i}" for i in range(n_patients)], per)
    s = 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1, y.size) - 0.75)))
    return y, s, groups


def test_resampling_is_by_patient():
    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    for idx in patient_resamples(groups, groups.size, 200, seed=1):
        counts = np.bincount(idx, minlength=groups.size)
        for g in np.unique(groups):
            assert len(set(counts[groups == g])) == 1  # a patient's cases come together
    seen = []
    bootstrap_ci(lambda y, p: seen.append(p.copy()) or 0.0, groups, groups, groups, n=50, seed=2)
    assert len(seen) == 50
    assert all(np.sum(p == "a") % 2 == 0 and np.sum(p == "c") % 3 == 0 for p in seen)


def test_duplicated_cases_of_one_patient_change_nothing():
    y, s, _ = _patients(60, seed=3, per=1)
    groups = np.array([f"p{i}" for i in range(y.size)])
    base = bootstrap_ci(auc_score, y, s, groups, n=300, seed=0)
    # Every case twice, both copies belong to the same patient: same resamples, same CI.
    same = bootstrap_ci(auc_score, np.repeat(y, 2), np.repeat(s, 2), np.repeat(groups, 2), 300, 0)
    assert tuple(same) == pytest.approx(tuple(base), abs=1e-12)
    # Treating the copies as independent patients pretends to have twice the data.
    naive = bootstrap_ci(auc_score, np.repeat(y, 2), np.repeat(s, 2), None, 300, 0)
    assert naive.hi - naive.lo < 0.85 * (base.hi - base.lo)


def test_ci_contains_estimate_shrinks_with_data_and_is_seeded():
    y, s, g = _patients(40, seed=4)
    small = bootstrap_ci(auc_score, y, s, g, n=1000, seed=0)
    assert isinstance(small, CI) and small.n_used == small.n_requested == 1000
    assert small.lo <= auc_score(y, s) <= small.hi
    yb, sb, gb = _patients(640, seed=4)
    big = bootstrap_ci(auc_score, yb, sb, gb, n=1000, seed=0)
    assert (big.hi - big.lo) < 0.5 * (small.hi - small.lo)  # ~1/sqrt(16) = 0.25 expected
    assert bootstrap_ci(auc_score, y, s, g, n=1000, seed=0) == small
    assert bootstrap_ci(auc_score, y, s, g, n=1000, seed=1) != small


def test_undefined_resamples_are_skipped_and_counted():
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    ci = bootstrap_ci(auc_score, y, s, None, n=1000, seed=0)
    # P(positive case never drawn) = (5/6)^6 ≈ 0.335.
    assert 600 < ci.n_used < 730 and ci.n_requested == 1000
    assert ci.lo == ci.hi == 1.0
    many = bootstrap_many(
        lambda a, b: {"auc": auc_score(a, b), "n": float(a.size)}, y, s, None, 100
    )
    assert many["n"].n_used == 100 and many["auc"].n_used < 100


def test_mean_ci_for_per_case_values():
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.7, 0.9, 50)
    dice[3] = np.nan  # a case without a mask is ignored
    mean, ci = mean_ci(dice, None, n=500)
    assert mean == pytest.approx(np.nanmean(dice)) and ci.lo < mean < ci.hi


def test_roc_band_brackets_the_pooled_curve():
    y, s, g = _patients(100, seed=8)
    band = bootstrap_roc_band(y, s, g, n=300, seed=0, grid_size=51)
    pooled = roc_at(*roc_points(y, s), band.fpr)
    assert band.n_used == 300 and np.all(band.lo <= band.hi)
    assert np.mean((band.lo <= pooled + 1e-9) & (pooled <= band.hi + 1e-9)) > 0.95


# ---------------------------------------------------------------- DeLong


def _slow_delong(y: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
    """DeLong et al. (1988) covariance straight from the placement values, O(m·n)."""
    pos = y.astype(bool)
    v10, v01 = [], []
    for s in scores:
        x, z = s[pos], s[~pos]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    m, n = pos.sum(), (~pos).sum()
    return np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n


def test_delong_auc_equals_sklearn_and_variance_equals_slow_reference():
    y, s1 = _binary_data(9, n=120, ties=True)
    _, s2 = _binary_data(10, n=120)
    aucs, cov = delong_covariance(y, s1, s2)
    assert aucs == pytest.approx([skm.roc_auc_score(y, s1), skm.roc_auc_score(y, s2)], abs=1e-12)
    np.testing.assert_allclose(cov, _slow_delong(y, [s1, s2]), rtol=1e-10, atol=1e-15)
    auc, lo, hi = delong_ci(y, s1)
    half = 1.959963984540054 * np.sqrt(cov[0, 0])
    assert (lo, hi) == pytest.approx((auc - half, auc + half))


def test_delong_identical_models_give_p_one():
    y, s = _binary_data(11, n=80)
    auc1, auc2, z, p = delong_test(y, s, s.copy())
    assert auc1 == auc2 and z == 0.0 and p == 1.0
    # A monotone transform ranks the cases the same way: same AUC, same placements, p = 1.
    assert delong_test(y, s, np.log(s))[3] == 1.0


def test_delong_detects_a_clearly_better_model():
    rng = np.random.default_rng(12)
    y = (rng.random(200) < 0.5).astype(int)
    good = 2.5 * y + rng.normal(0, 1, 200)
    poor = 0.3 * y + rng.normal(0, 1, 200)
    auc1, auc2, z, p = delong_test(y, good, poor)
    assert auc1 > 0.9 and auc2 < 0.7 and z > 0 and p < 0.01
    # Swapping the models flips z and keeps p.
    assert delong_test(y, poor, good)[2:] == pytest.approx((-z, p))


def test_delong_hand_case():
    # Positives (0.8, 0.6), negatives (0.7, 0.2); model 2 ranks perfectly.
    y = np.array([1, 1, 0, 0])
    s1 = np.array([0.8, 0.6, 0.7, 0.2])
    s2 = np.array([0.8, 0.75, 0.7, 0.2])
    # Model 1: V10 = (1, 0.5), V01 = (0.5, 1); model 2: V10 = (1, 1), V01 = (1, 1).
    # Var(AUC1) = var(1, .5)/2 + var(.5, 1)/2 = 0.125/2 + 0.125/2 = 0.125; model 2 and the
    # covariance are 0, so z = (0.75 − 1) / sqrt(0.125).
    auc1, auc2, z, p = delong_test(y, s1, s2)
    assert (auc1, auc2) == (0.75, 1.0)
    assert z == pytest.approx(-0.25 / np.sqrt(0.125))
    assert p == pytest.approx(2 * (1 - 0.7602499389065233))  # Φ(0.7071)
