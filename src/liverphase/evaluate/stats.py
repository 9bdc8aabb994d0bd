"""Confidence intervals by bootstrap over patients, and DeLong's test for correlated AUCs.

Cases of one patient are not independent, so the bootstrap resamples patients (with
replacement) and every case of a drawn patient comes along, as many times as it was drawn.
When a patient has several studies, AUCs are compared with Obuchowski's (1997) clustered
version of DeLong's test (`auc_test` chooses), which is DeLong's test when no patient repeats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from liverphase.evaluate.metrics import roc_at, roc_points


class CI(tuple):
    """A percentile interval (lo, hi) that also records how many resamples defined it.

    It unpacks and serialises to JSON as the pair `[lo, hi]`.
    """

    n_used: int
    n_requested: int

    def __new__(cls, lo: float, hi: float, n_used: int = 0, n_requested: int = 0) -> CI:
        """Build from the bounds and the resample counts."""
        ci = super().__new__(cls, (float(lo), float(hi)))
        ci.n_used, ci.n_requested = int(n_used), int(n_requested)
        return ci

    @property
    def lo(self) -> float:
        """Lower bound."""
        return self[0]

    @property
    def hi(self) -> float:
        """Upper bound."""
        return self[1]

    def __repr__(self) -> str:
        return f"CI({self[0]:.4g}, {self[1]:.4g}, used {self.n_used}/{self.n_requested})"


def patient_resamples(
    groups: np.ndarray | None, n_cases: int, n: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield `n` index arrays, each a bootstrap sample of whole patients (seeded).

    A patient drawn c times contributes each of its cases c times; `groups=None` treats every
    case as its own patient.
    """
    if groups is None:
        inverse = np.arange(n_cases)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n_cases,):
            raise ValueError(f"groups has shape {groups.shape}, expected ({n_cases},)")
        inverse = np.unique(groups.astype(str), return_inverse=True)[1].ravel()
    n_groups = int(inverse.max()) + 1 if n_cases else 0
    rng = np.random.default_rng(seed)
    cases = np.arange(n_cases)
    for _ in range(n):
        counts = np.bincount(rng.integers(n_groups, size=n_groups), minlength=n_groups)
        yield np.repeat(cases, counts[inverse])


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def bootstrap_many(
    metric_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray | None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, CI]:
    """Percentile CIs for every key of a dict-valued metric, over the same patient resamples.

    A resample where a metric is undefined (NaN, or the function raises ValueError, e.g. only
    one class drawn) is skipped for that metric; `CI.n_used` says how many were kept.
    """
    y, p = np.asarray(y), np.asarray(p)
    samples: dict[str, list[float]] = {}
    for idx in patient_resamples(groups, y.shape[0], n, seed):
        try:
            values = metric_fn(y[idx], p[idx])
        except ValueError:
            continue
        for key, value in values.items():
            samples.setdefault(key, [])
            if _finite(value):
                samples[key].append(float(value))
    out = {}
    for key, vals in samples.items():
        if vals:
            lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        else:
            lo = hi = float("nan")
        out[key] = CI(lo, hi, len(vals), n)
    return out


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray | None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> CI:
    """Percentile (1 − alpha) CI of `metric_fn(y, p)` by bootstrap over patients (`groups`)."""
    cis = bootstrap_many(lambda a, b: {"v": metric_fn(a, b)}, y, p, groups, n, seed, alpha)
    return cis.get("v", CI(float("nan"), float("nan"), 0, n))


def mean_ci(
    values: np.ndarray, groups: np.ndarray | None, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, CI]:
    """Mean of per-case values (e.g. Dice, HD95; NaN ignored) and its patient-bootstrap CI."""
    v = np.asarray(values, dtype=np.float64)

    def fn(a: np.ndarray, _: np.ndarray) -> float:
        return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")

    return fn(v, v), bootstrap_ci(fn, v, v, groups, n, seed, alpha)


@dataclass(frozen=True)
class RocBand:
    """Pointwise bootstrap band of TPR over an FPR grid (vertical averaging)."""

    fpr: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_used: int
    level: float = 0.95


def bootstrap_roc_band(
    y: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray | None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    grid_size: int = 101,
) -> RocBand:
    """Percentile band of the ROC: TPR at fixed FPRs across patient resamples with both classes."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, grid_size)
    curves = []
    for idx in patient_resamples(groups, y.size, n, seed):
        yy = y[idx]
        if yy.all() or not yy.any():
            continue
        curves.append(roc_at(*roc_points(yy, score[idx]), grid))
    if not curves:
        nan = np.full(grid_size, np.nan)
        return RocBand(grid, nan, nan, 0, 1 - alpha)
    lo, hi = np.percentile(np.stack(curves), [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return RocBand(grid, lo, hi, len(curves), 1 - alpha)


# DeLong, DeLong & Clarke-Pearson (1988), with the midrank algorithm of Sun & Xu (2014):
# with m positives X and n negatives Y, the placement values are
#   V10(X_i) = (1/n) Σ_j ψ(X_i, Y_j),  V01(Y_j) = (1/m) Σ_i ψ(X_i, Y_j),  ψ = 1 if x > y, ½ if =, 0 if <,
# AUC = mean V10 = mean V01, and Var(AUC) = S10/m + S01/n with S10, S01 the sample (co)variances
# of V10 and V01 across models. Midranks give them in O(N log N): with T_z the midrank of a score
# among all N scores, T_x among the positives, T_y among the negatives,
#   V10(X_i) = (T_z(X_i) − T_x(X_i)) / n,  V01(Y_j) = 1 − (T_z(Y_j) − T_y(Y_j)) / m.
# Two models: z = (AUC1 − AUC2) / sqrt(S11 + S22 − 2 S12), p = 2 (1 − Φ(|z|)).
# It treats cases as independent. Obuchowski (1997, Biometrics 53:567) keeps the placement values
# but sums them per cluster (patient) i, with m_i positives and n_i negatives in it:
#   X_i = Σ_{j in i} V10(X_ij) − m_i·AUC,  Y_i = Σ_{k in i} V01(Y_ik) − n_i·AUC,
#   S10 = I10 / ((I10 − 1) m) Σ_i X_i X_i',  S01 = I01 / ((I01 − 1) n) Σ_i Y_i Y_i',
#   S11 = I / (I − 1) Σ_i X_i Y_i',  Cov(AUC, AUC') = S10/m + S01/n + (S11 + S11ᵀ)/(m n),
# with I clusters, I10 of them holding a positive and I01 a negative. With one case per cluster
# S11 = 0, I10 = m, I01 = n and it is DeLong's covariance exactly.


def _placements(
    y: np.ndarray, scores: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positive mask, AUCs (k,), V10 (k, m), V01 (k, n)) of k models by midranks."""
    pos = np.asarray(y).astype(bool)
    s = np.atleast_2d(np.stack([np.asarray(x, dtype=np.float64) for x in scores]))
    if s.shape[1] != pos.size:
        raise ValueError(f"scores have {s.shape[1]} cases, labels {pos.size}")
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    x, yv = s[:, pos], s[:, ~pos]
    tx = rankdata(x, axis=1)
    ty = rankdata(yv, axis=1)
    tz = rankdata(np.concatenate([x, yv], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return pos, aucs, v10, v01


def delong_covariance(y: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), covariance (k, k)) of k models' AUCs on the same cases, by DeLong's method."""
    pos, aucs, v10, v01 = _placements(y, scores)
    m, n = int(pos.sum()), int((~pos).sum())
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _cluster_index(groups: Sequence[str] | np.ndarray, n_cases: int) -> np.ndarray:
    """Cluster number 0..I−1 of every case (patient ids compared as text)."""
    g = np.asarray(groups)
    if g.shape != (n_cases,):
        raise ValueError(f"groups has shape {g.shape}, expected ({n_cases},)")
    return np.unique(g.astype(str), return_inverse=True)[1].ravel()


def clustered_auc_covariance(
    y: np.ndarray, groups: Sequence[str] | np.ndarray, *scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), covariance (k, k)) of k models' AUCs with cases clustered by patient
    (Obuchowski 1997); DeLong's covariance when every patient has one case."""
    pos, aucs, v10, v01 = _placements(y, scores)
    m, n = int(pos.sum()), int((~pos).sum())
    cluster = _cluster_index(groups, pos.size)
    n_clusters = int(cluster.max()) + 1
    cx, cy = cluster[pos], cluster[~pos]
    m_i = np.bincount(cx, minlength=n_clusters)
    n_i = np.bincount(cy, minlength=n_clusters)
    i10, i01 = int(np.sum(m_i > 0)), int(np.sum(n_i > 0))
    if i10 < 2 or i01 < 2:
        raise ValueError(
            f"the clustered test needs at least 2 patients with a positive and 2 with a negative "
            f"case, got {i10} and {i01}"
        )
    xs = np.stack([np.bincount(cx, v, n_clusters) for v in v10]) - np.outer(aucs, m_i)
    ys = np.stack([np.bincount(cy, v, n_clusters) for v in v01]) - np.outer(aucs, n_i)
    s10 = i10 / ((i10 - 1) * m) * (xs @ xs.T)
    s01 = i01 / ((i01 - 1) * n) * (ys @ ys.T)
    s11 = n_clusters / (n_clusters - 1) * (xs @ ys.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def repeats_patients(groups: Sequence[str] | np.ndarray | None) -> bool:
    """Whether some patient id occurs more than once (None: every case its own patient)."""
    if groups is None:
        return False
    g = np.asarray(groups).astype(str)
    return bool(np.unique(g).size < g.size)


def auc_test_name(groups: Sequence[str] | np.ndarray | None) -> str:
    """The test `auc_test` uses for these cases: 'DeLong', or 'clustered DeLong (Obuchowski
    1997), N patients / M studies' when a patient id repeats."""
    if not repeats_patients(groups):
        return "DeLong"
    g = np.asarray(groups).astype(str)
    return f"clustered DeLong (Obuchowski 1997), {np.unique(g).size} patients / {g.size} studies"


def _auc_variance(
    y: np.ndarray, score: np.ndarray, groups: Sequence[str] | np.ndarray | None
) -> tuple[float, float]:
    """(AUC, variance): clustered by patient when an id repeats, DeLong's otherwise."""
    if repeats_patients(groups):
        aucs, cov = clustered_auc_covariance(y, groups, score)
    else:
        aucs, cov = delong_covariance(y, score)
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(
    y: np.ndarray,
    score: np.ndarray,
    alpha: float = 0.05,
    groups: Sequence[str] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(AUC, lo, hi): AUC ± z_{1−α/2}·sqrt(Var), clipped to [0, 1]; Var is DeLong's, or
    Obuchowski's clustered one when `groups` repeats a patient."""
    auc, var = _auc_variance(y, score, groups)
    half = norm.ppf(1 - alpha / 2) * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def _z_test(aucs: np.ndarray, cov: np.ndarray) -> tuple[float, float, float, float]:
    """(AUC1, AUC2, z, two-sided p) of the difference of two AUCs with covariance `cov`."""
    auc1, auc2 = float(aucs[0]), float(aucs[1])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-15 * max(cov[0, 0] + cov[1, 1], 1e-300):
        # Placement values identical up to a constant: no evidence either way unless AUCs differ.
        if math.isclose(auc1, auc2, abs_tol=1e-12):
            return auc1, auc2, 0.0, 1.0
        return auc1, auc2, math.copysign(math.inf, auc1 - auc2), 0.0
    z = (auc1 - auc2) / math.sqrt(var)
    return auc1, auc2, float(z), float(2 * norm.sf(abs(z)))


def delong_test(
    y: np.ndarray, score1: np.ndarray, score2: np.ndarray
) -> tuple[float, float, float, float]:
    """(AUC1, AUC2, z, two-sided p) of DeLong's test that two correlated AUCs are equal."""
    return _z_test(*delong_covariance(y, score1, score2))


def clustered_delong_test(
    y: np.ndarray, score1: np.ndarray, score2: np.ndarray, groups: Sequence[str] | np.ndarray
) -> tuple[float, float, float, float]:
    """(AUC1, AUC2, z, two-sided p) of Obuchowski's (1997) clustered test of two paired AUCs."""
    return _z_test(*clustered_auc_covariance(y, groups, score1, score2))


def auc_test(
    y: np.ndarray,
    score1: np.ndarray,
    score2: np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
) -> tuple[float, float, float, float]:
    """(AUC1, AUC2, z, p): the clustered test when a patient id repeats, else DeLong's (the
    name of the one used: `auc_test_name(groups)`)."""
    if repeats_patients(groups):
        return clustered_delong_test(y, score1, score2, groups)
    return delong_test(y, score1, score2)


def paired_bootstrap_p(
    diff: np.ndarray, groups: np.ndarray | None, n: int = 1000, seed: int = 0
) -> float:
    """Two-sided p that the mean of paired per-case differences is 0, by bootstrap over patients.

    p = 2·min(share of resampled means ≤ 0, share ≥ 0), capped at 1: the smallest α at which the
    percentile CI of the mean difference excludes 0 (NaN differences are dropped first).
    """
    d = np.asarray(diff, dtype=np.float64)
    ok = np.isfinite(d)
    if not ok.any():
        return float("nan")
    g = None if groups is None else np.asarray(groups)[ok]
    d = d[ok]
    if np.all(d == 0):
        return 1.0
    means = np.array([d[idx].mean() for idx in patient_resamples(g, d.shape[0], n, seed)])
    share = min(float(np.mean(means <= 0)), float(np.mean(means >= 0)))
    return min(1.0, 2.0 * share)
