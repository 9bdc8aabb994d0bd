"""Issue #35: the kinetics baseline's label, its patient-grouped inner choice of C, and AUC tests
that count a patient's follow-up studies as one cluster (Obuchowski 1997)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import liverphase.evaluate.kinetics_baseline as kb
from liverphase.evaluate.report import comparison_table
from liverphase.evaluate.stats import (
    auc_test,
    auc_test_name,
    clustered_auc_covariance,
    clustered_delong_test,
    delong_ci,
    delong_covariance,
    delong_test,
    repeats_patients,
)

NAMES = ["HCC", "ICC"]


def _cases(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated models' scores, one study per case."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    common = rng.normal(0, 1, n)
    s1 = 1.2 * y + common + rng.normal(0, 0.7, n)
    s2 = 0.8 * y + common + rng.normal(0, 0.7, n)
    if ties:
        s1, s2 = np.round(s1, 1), np.round(s2, 1)
    return y, s1, s2


def _slow_obuchowski(y: np.ndarray, groups: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> float:
    """Var(AUC1 − AUC2) by Obuchowski (1997), cluster by cluster with ψ itself, O(M·N)."""
    pos = y.astype(bool)
    big_m, big_n = pos.sum(), (~pos).sum()
    clusters = list(dict.fromkeys(groups))
    i10 = len({g for g, p in zip(groups, pos, strict=True) if p})
    i01 = len({g for g, p in zip(groups, pos, strict=True) if not p})
    parts = []
    for s in (s1, s2):
        x, z = s[pos], s[~pos]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        auc = psi.mean()
        v10, v01 = psi.mean(1), psi.mean(0)
        xs = np.array(
            [v10[groups[pos] == c].sum() - (groups[pos] == c).sum() * auc for c in clusters]
        )
        ys = np.array(
            [v01[groups[~pos] == c].sum() - (groups[~pos] == c).sum() * auc for c in clusters]
        )
        parts.append((xs, ys))
    (x1, y1), (x2, y2) = parts
    k = len(clusters)

    def cov(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> float:
        s10 = i10 / ((i10 - 1) * big_m) * np.sum(xa * xb)
        s01 = i01 / ((i01 - 1) * big_n) * np.sum(ya * yb)
        s11_ab = k / (k - 1) * np.sum(xa * yb)
        s11_ba = k / (k - 1) * np.sum(xb * ya)
        return s10 / big_m + s01 / big_n + (s11_ab + s11_ba) / (big_m * big_n)

    return cov(x1, y1, x1, y1) + cov(x2, y2, x2, y2) - 2 * cov(x1, y1, x2, y2)


# ---------------------------------------------------------------- clustered DeLong


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_clustered_equals_delong_with_one_study_per_patient(seed: int, ties: bool) -> None:
    """Every patient one study: Obuchowski's covariance is DeLong's, to rounding."""
    y, s1, s2 = _cases(90, seed, ties)
    groups = np.array([f"P{i:03d}" for i in range(y.size)])
    aucs_c, cov_c = clustered_auc_covariance(y, groups, s1, s2)
    aucs_d, cov_d = delong_covariance(y, s1, s2)
    np.testing.assert_allclose(aucs_c, aucs_d, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov_c, cov_d, rtol=1e-12, atol=1e-15)
    p_c = clustered_delong_test(y, s1, s2, groups)[3]
    assert p_c == pytest.approx(delong_test(y, s1, s2)[3], rel=1e-12, abs=1e-15)
    assert auc_test_name(groups) == "DeLong" and not repeats_patients(groups)


def test_duplicated_studies_keep_the_clustered_p_and_shrink_the_naive_one() -> None:
    """Each study copied twice under its patient: the clustered p is the unduplicated DeLong p,
    while DeLong counting the copies as independent gets smaller (more 'significant')."""
    y, s1, s2 = _cases(80, seed=3)
    groups = np.array([f"P{i:03d}" for i in range(y.size)])
    _, _, z0, p0 = delong_test(y, s1, s2)
    y2, a2, b2, g2 = (np.repeat(v, 2) for v in (y, s1, s2, groups))
    _, _, z_c, p_c = clustered_delong_test(y2, a2, b2, g2)
    assert p_c == pytest.approx(p0, rel=1e-12) and z_c == pytest.approx(z0, rel=1e-12)
    _, _, z_naive, p_naive = delong_test(y2, a2, b2)
    assert p_naive < p0 and abs(z_naive) > 1.3 * abs(z0)
    # auc_test picks the clustered test because ids repeat, and says so
    assert auc_test(y2, a2, b2, g2)[3] == pytest.approx(p0, rel=1e-12)
    assert auc_test_name(g2) == "clustered DeLong (Obuchowski 1997), 80 patients / 160 studies"


def test_clustered_hand_case() -> None:
    """Four patients: A and B with one HCC and one ICC study, C one ICC, D one HCC.

    Positives 0.9 (A), 0.6 (B), 0.4 (C); negatives 0.5 (A), 0.95 (B), 0.1 (D). V10 = (2/3, 2/3,
    1/3), V01 = (2/3, 0, 1), AUC = 5/9. Cluster residuals X = (1/9, 1/9, −2/9, 0), Y = (1/9, −5/9,
    0, 4/9); I = 4, I10 = I01 = 3, M = N = 3: S10 = 1/27, S01 = 7/27, S11 = (4/3)(−4/81), so
    Var = S10/3 + S01/3 + 2 S11/9 = 184/2187 (DeLong, ignoring the clusters: 8/81).
    """
    y = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([0.9, 0.5, 0.6, 0.95, 0.4, 0.1])
    groups = np.array(["A", "A", "B", "B", "C", "D"])
    aucs, cov = clustered_auc_covariance(y, groups, s)
    assert aucs[0] == pytest.approx(5 / 9, abs=1e-15)
    assert cov[0, 0] == pytest.approx(184 / 2187, rel=1e-12)
    assert delong_covariance(y, s)[1][0, 0] == pytest.approx(8 / 81, rel=1e-12)
    # the analytic CI follows the clustered variance when ids repeat
    auc, lo, hi = delong_ci(y, s, alpha=0.5, groups=groups)  # a 50% CI, inside [0, 1]
    half = norm.ppf(0.75) * np.sqrt(184 / 2187)
    assert (auc, lo, hi) == pytest.approx((5 / 9, 5 / 9 - half, 5 / 9 + half), rel=1e-12)


def test_clustered_variance_matches_a_slow_cluster_by_cluster_reference() -> None:
    """Mixed clusters (1-3 studies, both labels within a patient, ties): the vectorised
    covariance gives the literal formula's Var(AUC1 − AUC2)."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 4, 50)
    groups = np.repeat([f"P{i:02d}" for i in range(sizes.size)], sizes)
    y = (rng.random(groups.size) < 0.45).astype(int)
    s1 = np.round(y + rng.normal(0, 1, y.size), 1)
    s2 = np.round(0.5 * y + rng.normal(0, 1, y.size), 1)
    _, cov = clustered_auc_covariance(y, groups, s1, s2)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert var == pytest.approx(_slow_obuchowski(y, groups, s1, s2), rel=1e-10)
    # the order of the studies and of the models does not matter
    perm = rng.permutation(y.size)
    _, swapped = clustered_auc_covariance(y[perm], groups[perm], s2[perm], s1[perm])
    np.testing.assert_allclose(swapped, cov[::-1, ::-1], rtol=1e-12)


def test_clustered_test_needs_two_patients_per_class() -> None:
    y = np.array([1, 1, 0, 0, 0])
    groups = np.array(["A", "A", "B", "C", "C"])  # the positives all belong to patient A
    with pytest.raises(ValueError, match="2 patients with a positive"):
        clustered_delong_test(y, np.arange(5.0), np.arange(5.0)[::-1], groups)


def test_comparison_table_auc_ci_is_the_patient_bootstrap() -> None:
    """The tables' AUC CI resamples patients: copying each study under its patient leaves it
    unchanged; the DeLong p is clustered and equals the unduplicated one."""
    y, s1, s2 = _cases(60, seed=5)
    groups = np.array([f"P{i:02d}" for i in range(y.size)])
    models = {"ref": np.c_[1 - _sig(s1), _sig(s1)], "other": np.c_[1 - _sig(s2), _sig(s2)]}
    base = comparison_table(models, y, groups, "ref", NAMES, n_boot=200, seed=1)
    dup = comparison_table(
        {k: np.repeat(v, 2, axis=0) for k, v in models.items()},
        np.repeat(y, 2),
        np.repeat(groups, 2),
        "ref",
        NAMES,
        n_boot=200,
        seed=1,
    )
    for a, b in zip(base, dup, strict=True):
        assert b["auc_ci"] == pytest.approx(a["auc_ci"], abs=1e-12)
    assert dup[1]["delong_p"] == pytest.approx(base[1]["delong_p"], rel=1e-12)
    assert base[1]["delong_method"] == "DeLong"
    assert dup[1]["delong_method"].startswith("clustered DeLong (Obuchowski 1997), 60 patients")


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------- the kinetics baseline


def test_the_baseline_label_says_it_reads_the_true_mask() -> None:
    from liverphase.evaluate.ablate import experiment_tables
    from liverphase.evaluate.compare import KINETICS

    assert KINETICS == kb.KINETICS_LABEL == "kinetics regression (true mask)"
    first = experiment_tables(["NC", "ART", "PV", "DL"])[
        "1. MIFF+SPM vs other networks and the kinetics baseline"
    ]
    assert first[KINETICS] == {"model": "kinetics"}
    assert not any("logistic regression" in k for k in first)


def _cohort(seed: int = 0) -> tuple[dict, dict, dict, list]:
    """30 patients with 2 or 3 studies each (labels per patient), two features, 3 outer folds."""
    rng = np.random.default_rng(seed)
    features, labels, groups = {}, {}, {}
    for p in range(30):
        label = NAMES[p % 2]
        for s in range(2 + p % 2 + (p % 5 == 0)):
            c = f"P{p:02d}_{s}"
            groups[c], labels[c] = f"P{p:02d}", label
            features[c] = rng.normal(NAMES.index(label), 1.0, 2)
    patients = sorted(set(groups.values()))
    folds = []
    for k in range(3):
        test_p = set(patients[k::3])
        folds.append(
            {
                "train": [c for c in groups if groups[c] not in test_p],
                "test": [c for c in groups if groups[c] in test_p],
            }
        )
    return features, labels, groups, folds


def test_inner_splits_never_put_a_patient_on_both_sides() -> None:
    features, labels, groups, folds = _cohort()
    train = folds[0]["train"]
    y = np.array([NAMES.index(labels[c]) for c in train])
    pats = np.array([groups[c] for c in train])
    splits = kb.inner_patient_splits(y, pats, seed=0)
    assert len(splits) == kb.MAX_INNER_FOLDS  # 10 patients per class in training: 5 folds
    for tr, va in splits:
        assert not set(pats[tr]) & set(pats[va])
        assert set(y[tr]) == set(y[va]) == {0, 1}
    val = np.concatenate([va for _, va in splits])
    assert np.array_equal(np.sort(val), np.arange(len(train)))  # each study validated once
    # a class with one patient: no grouped split exists
    assert kb.inner_patient_splits(np.array([0, 0, 1, 1]), ["a", "a", "b", "c"]) == []


def test_inner_choice_of_c_is_grouped_by_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LogisticRegressionCV behind every fold receives patient-grouped splits, and the
    baseline's probabilities are those of a fit on exactly those splits."""
    features, labels, groups, folds = _cohort()
    seen: list[tuple[list, np.ndarray]] = []

    class Spy(LogisticRegressionCV):
        def fit(self, x, y, **kw):  # type: ignore[override]
            seen.append((list(self.cv), np.asarray(y)))
            return super().fit(x, y, **kw)

    monkeypatch.setattr(kb, "LogisticRegressionCV", Spy)
    record: list[dict] = []
    probs = kb.logistic_regression_cv(features, labels, folds, NAMES, 0, groups, record)
    assert len(seen) == len(folds) == len(record)
    for fold, (splits, y), rec in zip(folds, seen, record, strict=True):
        pats = np.array([groups[c] for c in fold["train"]])
        assert len(splits) == rec["inner_folds"] >= 2
        for tr, va in splits:
            assert not set(pats[tr]) & set(pats[va])
        assert rec["inner_cv"] == "StratifiedGroupKFold by patient"
        # the same fit done by hand on StratifiedGroupKFold's splits gives the same C and output
        k = min(5, min(np.unique(pats[y == c]).size for c in (0, 1)))
        own = list(
            StratifiedGroupKFold(k, shuffle=True, random_state=0).split(
                np.zeros((y.size, 1)), y, pats
            )
        )
        ref = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=10,
                cv=own,
                max_iter=5000,
                scoring="neg_log_loss",
                random_state=0,
                l1_ratios=(0.0,),
                use_legacy_attributes=False,
            ),
        ).fit(np.stack([features[c] for c in fold["train"]]), y)
        assert rec["C"] == pytest.approx(ref[-1].C_)
        expected = ref.predict_proba(np.stack([features[c] for c in fold["test"]]))
        got = np.stack([probs[c] for c in fold["test"]])
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_kinetics_baseline_groups_by_the_items_patients(monkeypatch: pytest.MonkeyPatch) -> None:
    """kinetics_baseline_cv reads the patient of each cached item (no patient: an error)."""
    features, labels, groups, folds = _cohort(1)
    items = {c: {"label": labels[c], "patient_id": groups[c]} for c in features}
    monkeypatch.setattr(
        kb, "kinetics_features", lambda its: (np.stack([features[i["id"]] for i in its]), ["a"])
    )
    for c in items:
        items[c]["id"] = c
    record: list[dict] = []
    probs = kb.kinetics_baseline_cv(items, folds, NAMES, 0, record)
    direct = kb.logistic_regression_cv(features, labels, folds, NAMES, 0, groups)
    for c in features:
        np.testing.assert_allclose(probs[c], direct[c], rtol=1e-12)
    assert all(r["inner_folds"] >= 2 for r in record)
    del items[next(iter(items))]["patient_id"]
    with pytest.raises(Exception, match="no patient id"):
        kb.kinetics_baseline_cv(items, folds, NAMES, 0)


def test_too_few_patients_fall_back_to_a_fixed_c_and_say_so() -> None:
    """One ICC patient in a training fold: no grouped inner split, C = 1 with a warning."""
    rng = np.random.default_rng(2)
    groups = {f"h{i}": f"H{i // 2}" for i in range(8)} | {"i0": "I0", "i1": "I0", "i2": "I1"}
    labels = {c: ("ICC" if c.startswith("i") else "HCC") for c in groups}
    features = {c: rng.normal(NAMES.index(labels[c]), 1, 2) for c in groups}
    folds = [{"train": [*(f"h{i}" for i in range(6)), "i0", "i1"], "test": ["h6", "h7", "i2"]}]
    record: list[dict] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = kb.logistic_regression_cv(features, labels, folds, NAMES, 0, groups, record)
    assert any("fewer than two patients" in str(w.message) for w in caught)
    assert record == [{"fold": 0, "C": 1.0, "inner_folds": 0, "inner_cv": "none (C fixed)"}]
    assert set(probs) == {"h6", "h7", "i2"}
    assert all(p.sum() == pytest.approx(1.0) for p in probs.values())
