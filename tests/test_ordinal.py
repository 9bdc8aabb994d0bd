"""Ordinal evaluation against scikit-learn and hand counts, the patient bootstrap, and CORAL's loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch.nn import functional as F

from liverphase.evaluate.ordinal import (
    ORDINAL_KEYS,
    cohen_kappa,
    ordinal_metrics,
    ordinal_table_markdown,
    paired_ordinal_p,
    slice_accuracy,
)
from liverphase.evaluate.stats import patient_resamples
from liverphase.train.losses import (
    coral_loss_from_logits,
    cumulative_log_probs,
    ordinal_levels,
)

NAMES = ["healthy", "mild", "moderate", "severe"]


def _cohort(seed: int, n: int = 200, noise: float = 0.8, k: int = 4, per_patient: int = 2):
    """Stages, probabilities peaked near the truth (ordinal noise), patient ids (per_patient each)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centre = y + rng.normal(0, noise, n)
    logits = -((np.arange(k)[None, :] - centre[:, None]) ** 2)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pids = np.array([f"p{i // per_patient:03d}" for i in range(n)])
    return y, p, pids


def _probs_from_pred(pred: np.ndarray, k: int = 4, conf: float = 0.7) -> np.ndarray:
    p = np.full((pred.size, k), (1 - conf) / (k - 1))
    p[np.arange(pred.size), pred] = conf
    return p


# ---------------------------------------------------------------- point values


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_metrics_match_sklearn_and_hand(seed):
    y, p, pids = _cohort(seed)
    pred = p.argmax(1)
    m = ordinal_metrics(y, p, pids, NAMES, n_boot=0)
    labels = list(range(4))
    assert m["qwk"] == pytest.approx(
        skm.cohen_kappa_score(y, pred, labels=labels, weights="quadratic"), abs=1e-12
    )
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert m["mae_stage"] == pytest.approx(
        sum(abs(a - b) for a, b in zip(pred, y, strict=True)) / y.size
    )
    recall = skm.recall_score(y, pred, labels=labels, average=None)
    for c, name in enumerate(NAMES):
        stage = m["per_stage"][name]
        assert stage["n"] == int(np.sum(y == c))
        assert stage["sensitivity"] == pytest.approx(recall[c])
        assert stage["specificity"] == pytest.approx(
            skm.recall_score(y == c, pred == c, pos_label=False)
        )
        assert stage["accuracy"] == pytest.approx(skm.accuracy_score(y == c, pred == c))
    assert m["n"] == 200 and m["n_patients"] == 100
    assert not any(key.endswith("_ci") for key in m)


def test_hand_case_mae_and_kappas():
    # Truth 0 1 2 3 3, predicted 0 2 2 1 3: errors 0 1 0 2 0 → MAE 3/5; 3 of 5 right.
    y = np.array([0, 1, 2, 3, 3])
    pred = np.array([0, 2, 2, 1, 3])
    m = ordinal_metrics(y, _probs_from_pred(pred), None, NAMES, n_boot=0)
    assert m["mae_stage"] == pytest.approx(3 / 5)
    assert m["acc"] == pytest.approx(3 / 5)
    # Unweighted κ by hand: po = 3/5; pe = Σ row·col / 25 = (1·1 + 1·1 + 1·2 + 2·1) / 25 = 6/25.
    assert m["kappa"] == pytest.approx((3 / 5 - 6 / 25) / (1 - 6 / 25))
    assert m["per_stage"]["severe"]["sensitivity"] == pytest.approx(1 / 2)
    # Not moderate: 4 cases, one of them (a mild) called moderate → specificity 3/4.
    assert m["per_stage"]["moderate"]["specificity"] == pytest.approx(3 / 4)


def test_perfect_predictions_and_undefined_values():
    y = np.array([0, 1, 2, 3, 1, 2])
    m = ordinal_metrics(y, _probs_from_pred(y), None, NAMES, n_boot=0)
    assert m["qwk"] == 1.0 and m["kappa"] == 1.0 and m["mae_stage"] == 0.0 and m["acc"] == 1.0
    assert m["macro_auc"] == 1.0
    # No healthy controls in this cohort: macro AUC and healthy sensitivity are undefined (None),
    # the rest are still defined; everything serialises.
    y = np.array([1, 2, 3, 1, 2, 3])
    m = ordinal_metrics(y, _probs_from_pred(np.array([1, 2, 3, 2, 2, 3])), None, NAMES, 50)
    assert m["macro_auc"] is None and m["per_stage"]["healthy"]["sensitivity"] is None
    assert m["per_stage"]["healthy"]["specificity"] == 1.0 and m["per_stage"]["healthy"]["n"] == 0
    json.dumps(m, allow_nan=False)
    # One class everywhere: κ is 0/0, undefined, as in scikit-learn (which warns and gives NaN).
    assert math.isnan(cohen_kappa(np.array([[5, 0], [0, 0]])))


# ---------------------------------------------------------------- bootstrap over patients


def test_cis_bracket_the_estimate_and_are_json():
    y, p, pids = _cohort(3)
    m = ordinal_metrics(y, p, pids, NAMES, n_boot=300, seed=1)
    for key in ORDINAL_KEYS:
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi and hi - lo > 0, key
    for stage in m["per_stage"].values():
        for rate in ("accuracy", "sensitivity"):
            lo, hi = stage[f"{rate}_ci"]
            assert lo <= stage[rate] <= hi
    assert m["n_boot"] == 300 and 0 < m["n_boot_used"] <= 300 and m["ci_level"] == 0.95
    json.dumps(m, allow_nan=False)


def test_bootstrap_resamples_patients_not_cases():
    # The same 60 patients with one study each, or with each study repeated 4 times: resampling
    # patients draws the same patients in both, so the CIs are identical; resampling cases would
    # make the repeated cohort's CI about half as wide (4× the "independent" cases).
    y, p, _ = _cohort(4, n=60)
    once = ordinal_metrics(y, p, [f"p{i}" for i in range(60)], NAMES, n_boot=200, seed=5)
    rep_y, rep_p = np.repeat(y, 4), np.repeat(p, 4, axis=0)
    rep_ids = [f"p{i}" for i in range(60) for _ in range(4)]
    four = ordinal_metrics(rep_y, rep_p, rep_ids, NAMES, n_boot=200, seed=5)
    for key in ORDINAL_KEYS:
        assert four[key] == pytest.approx(once[key])
        assert four[f"{key}_ci"] == pytest.approx(once[f"{key}_ci"]), key
    assert four["n"] == 240 and four["n_patients"] == 60
    as_cases = ordinal_metrics(rep_y, rep_p, None, NAMES, n_boot=200, seed=5)
    width = once["acc_ci"][1] - once["acc_ci"][0]
    assert as_cases["acc_ci"][1] - as_cases["acc_ci"][0] < 0.7 * width


# ---------------------------------------------------------------- paired comparison


@pytest.mark.parametrize("metric", ["acc", "qwk", "kappa", "macro_f1", "mae_stage", "macro_auc"])
def test_paired_p_identical_and_clearly_better(metric):
    y, good, pids = _cohort(6, n=200, noise=0.3)
    _, bad, _ = _cohort(7, n=200, noise=0.3)  # predictions for other cases: near chance here
    assert paired_ordinal_p(y, good, good, pids, metric, n_boot=200) == 1.0
    p_ab = paired_ordinal_p(y, good, bad, pids, metric, n_boot=200, seed=2)
    assert p_ab < 0.01
    assert paired_ordinal_p(y, bad, good, pids, metric, n_boot=200, seed=2) == pytest.approx(p_ab)


def test_paired_p_equal_models_is_not_small_and_matches_direct_resampling():
    y, a, pids = _cohort(8, n=200, noise=0.9)
    # B: A's predictions with 20 random cases shifted one stage: a small, noisy difference.
    rng = np.random.default_rng(0)
    pred_b = a.argmax(1).copy()
    flip = rng.choice(200, 20, replace=False)
    pred_b[flip] = np.clip(pred_b[flip] + rng.choice([-1, 1], 20), 0, 3)
    b = _probs_from_pred(pred_b)
    # Direct: resample patients, recompute both accuracies, p from the share on each side.
    pred_a = a.argmax(1)
    diffs = np.array(
        [
            np.mean(pred_a[i] == y[i]) - np.mean(pred_b[i] == y[i])
            for i in patient_resamples(pids, 200, 500, 3)
        ]
    )
    direct = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    assert paired_ordinal_p(y, a, b, pids, "acc", n_boot=500, seed=3) == pytest.approx(direct)
    # κ is not a per-case mean: both κs are recomputed on each patient resample (sklearn here).
    qwk = [
        skm.cohen_kappa_score(y[i], pred_a[i], labels=range(4), weights="quadratic")
        - skm.cohen_kappa_score(y[i], pred_b[i], labels=range(4), weights="quadratic")
        for i in patient_resamples(pids, 200, 200, 4)
    ]
    qwk = np.array(qwk)
    direct = min(1.0, 2 * min(np.mean(qwk <= 0), np.mean(qwk >= 0)))
    assert 0.02 < direct < 1.0
    assert paired_ordinal_p(y, a, b, pids, "qwk", n_boot=200, seed=4) == pytest.approx(direct)
    with pytest.raises(ValueError, match="metric"):
        paired_ordinal_p(y, a, b, pids, "auc", n_boot=10)


# ---------------------------------------------------------------- per-slice accuracy


def test_slice_accuracy_pools_slices_and_resamples_patients():
    scans = [
        np.array([1, 1, 1, 0]),  # label 1: 3/4
        np.array([2, 2]),  # label 2: 2/2
        np.eye(4)[[3, 3, 0, 0, 0, 0]] * 0.9,  # (D, K) scores, label 3: 2/6
    ]
    out = slice_accuracy(scans, [1, 2, 3], ["a", "b", "c"], n_boot=300, seed=0)
    # Pooled over slices (7/12), not the mean of per-scan accuracies ((3/4 + 1 + 1/3) / 3).
    assert out["slice_acc"] == pytest.approx(7 / 12)
    assert out["n_slices"] == 12 and out["n_scans"] == 3 and out["n_patients"] == 3
    lo, hi = out["slice_acc_ci"]
    assert lo <= 7 / 12 <= hi and hi > lo
    # All three scans of one patient: every patient resample is the same data, so the CI
    # collapses onto the estimate (a case bootstrap would give a wide interval).
    one = slice_accuracy(scans, [1, 2, 3], ["a", "a", "a"], n_boot=300, seed=0)
    assert one["slice_acc_ci"] == pytest.approx([7 / 12, 7 / 12])
    assert one["n_patients"] == 1


def test_markdown_renders_confusion_rows_as_truth():
    y = np.array([0, 1, 1, 2, 3, 3, 3])
    pred = np.array([0, 1, 2, 2, 3, 3, 1])
    m = ordinal_metrics(y, _probs_from_pred(pred), None, NAMES, n_boot=50)
    sl = slice_accuracy([np.array([0, 0])], [0], None, n_boot=0)
    text = ordinal_table_markdown(m, sl)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ")
    }
    assert rows["severe"][-4:] == ["0", "1", "0", "2"]  # truth severe: one called mild
    assert rows["mild"][-4:] == ["0", "1", "1", "0"]
    assert rows["Truth \\ predicted"] == NAMES
    assert rows["Quadratic-weighted κ"][0].startswith(f"{m['qwk']:.3f} (")
    assert rows["Per-slice accuracy (2 slices)"] == ["1.000"]


# ---------------------------------------------------------------- CORAL loss


def _direct_coral(logits: torch.Tensor, target: torch.Tensor) -> float:
    p = torch.softmax(logits.double(), 1)
    total = 0.0
    for i in range(p.shape[0]):
        for k in range(p.shape[1] - 1):
            above = p[i, k + 1 :].sum().item()
            below = p[i, : k + 1].sum().item()
            total -= math.log(above) if target[i] > k else math.log(below)
    return total / p.shape[0]


def test_coral_loss_equals_direct_computation_and_coral_pytorch():
    coral = pytest.importorskip("coral_pytorch")
    from coral_pytorch.dataset import levels_from_labelbatch
    from coral_pytorch.losses import coral_loss

    assert coral.__version__ == "1.4.0"
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 4, 6):
        logits = torch.randn(16, k, generator=g, dtype=torch.float64) * 3
        target = torch.randint(0, k, (16,), generator=g)
        ours = coral_loss_from_logits(logits, target)
        assert ours.item() == pytest.approx(_direct_coral(logits, target), rel=1e-10)
        levels = levels_from_labelbatch(target, k, dtype=torch.float64)
        assert torch.equal(ordinal_levels(target, k).double(), levels)
        log_gt, log_le = cumulative_log_probs(logits)
        # coral_pytorch sums over the K − 1 tasks and averages over examples ('mean').
        theirs = coral_loss(log_gt - log_le, levels)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
        per = coral_loss_from_logits(logits, target, reduction="none")
        assert torch.allclose(per, coral_loss(log_gt - log_le, levels, reduction=None))
    # Two classes: one task, P(y > 0) = p₁: CORAL is plain cross-entropy.
    logits = torch.randn(8, 2, generator=g)
    target = torch.randint(0, 2, (8,), generator=g)
    assert coral_loss_from_logits(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6
    )


def test_coral_loss_of_a_cumulative_link_head():
    coral = pytest.importorskip("coral_pytorch.losses")
    # A cumulative-link model: P(y ≤ k) = σ(θ_k − η). Its log class probabilities as logits
    # give coral_pytorch's loss on its own cumulative logits η − θ_k.
    g = torch.Generator().manual_seed(1)
    eta = torch.randn(10, 1, generator=g, dtype=torch.float64) * 2
    theta = torch.tensor([[-1.5, 0.0, 1.0]], dtype=torch.float64)
    cdf = torch.cat([torch.sigmoid(theta - eta), torch.ones(10, 1, dtype=torch.float64)], 1)
    class_p = torch.diff(cdf, dim=1, prepend=torch.zeros(10, 1, dtype=torch.float64))
    target = torch.randint(0, 4, (10,), generator=g)
    ours = coral_loss_from_logits(class_p.log(), target)
    theirs = coral.coral_loss(eta - theta, ordinal_levels(target, 4).double())
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9)
    # Softmax ignores a per-row shift: raw logits and their log-softmax give the same loss.
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    assert coral_loss_from_logits(logits, target).item() == pytest.approx(
        coral_loss_from_logits(F.log_softmax(logits, 1) + 7.0, target).item(), rel=1e-12
    )


def test_coral_loss_is_stable_differentiable_and_ordinal():
    target = torch.tensor([0, 2, 3])
    # Confident and right: the loss tends to 0, with finite values and gradients at huge logits.
    for scale in (10.0, 100.0, 1e4):
        logits = (F.one_hot(target, 4).double() * scale).requires_grad_()
        loss = coral_loss_from_logits(logits, target)
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()
        # Each of the K − 1 = 3 tasks leaves at most 3·e^(−scale) on its wrong side.
        assert 0 <= loss.item() < 9 * math.exp(-scale) + 1e-12
    # Confident and wrong by 3 stages at huge logits: large but finite (no log(0)).
    huge_wrong = coral_loss_from_logits(torch.tensor([[0.0, 0.0, 0.0, 1e4]]), torch.tensor([0]))
    assert math.isfinite(huge_wrong.item()) and huge_wrong.item() > 1e4
    # Same probability (0.1) on the true stage "healthy", the rest one or two stages away:
    # cross-entropy cannot tell them apart, CORAL charges the two-stage error twice.
    one_off = torch.tensor([[0.1, 0.9, 0.0, 0.0]]).clamp_min(1e-12).log()
    two_off = torch.tensor([[0.1, 0.0, 0.9, 0.0]]).clamp_min(1e-12).log()
    y0 = torch.tensor([0])
    assert F.cross_entropy(one_off, y0).item() == pytest.approx(F.cross_entropy(two_off, y0).item())
    c1, c2 = coral_loss_from_logits(one_off, y0).item(), coral_loss_from_logits(two_off, y0).item()
    assert c1 == pytest.approx(-math.log(0.1), rel=1e-6)
    assert c2 == pytest.approx(-2 * math.log(0.1), rel=1e-6)
    # Gradient against finite differences.
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 1])
    assert torch.autograd.gradcheck(lambda z: coral_loss_from_logits(z, t), (x,))
    with pytest.raises(ValueError):
        coral_loss_from_logits(x, torch.tensor([0, 1, 2, 4, 1]))
