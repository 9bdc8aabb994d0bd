"""Self-supervised pieces against direct computations: Barlow Twins, VICReg, patch masks, sparse
masking, the MAE loss and decoder path, and the per-phase encoder interface of the models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.losses import BarlowTwinsLoss

from liverphase.models import create_model
from liverphase.ssl.masking import (
    MAEDecoder,
    Upsample2x,
    expand_mask,
    mae_loss,
    masked_instance_norm,
    patch_normalised,
    sample_patch_mask,
    sparse_masking,
)
from liverphase.ssl.net import SSLNet
from liverphase.ssl.objectives import barlow_twins_loss, vicreg_loss, vicreg_terms
from liverphase.ssl.pretrain import PretrainConfig
from liverphase.ssl.probe import pooled_features, probe_auc


def small_std_net(phases: int = 3, width: int = 4, channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    names = ["PRE", "ART", "PV", "TP", "HBP"][:phases]
    return create_model("std_net", 2, names, in_channels=channels, base_channels=width, scales=3)


# ----------------------------------------------------------------------------- objectives
def _pairs(seed: int, n: int = 6, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=d)
    b = a + rng.normal(scale=0.5, size=(n, d))
    return a, b


def _barlow_direct(a: np.ndarray, b: np.ndarray, lambd: float) -> float:
    """MONAI's definition, loop by loop in float64: batch-standardised with Bessel's std + 1e-6,
    C = z_aᵀ z_b / N, Σ (1 − C_ii)² + λ Σ_{i≠j} C_ij²."""
    n, d = a.shape

    def standardise(z: np.ndarray) -> np.ndarray:
        mean = z.mean(axis=0)
        std = np.sqrt(((z - mean) ** 2).sum(axis=0) / (n - 1))
        return (z - mean) / (std + 1e-6)

    za, zb = standardise(a), standardise(b)
    total = 0.0
    for i, j in itertools.product(range(d), range(d)):
        c = sum(za[k, i] * zb[k, j] for k in range(n)) / n
        total += (1 - c) ** 2 if i == j else lambd * c**2
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_barlow_equals_monai_and_the_direct_formula(seed: int) -> None:
    a, b = _pairs(seed)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ours = float(barlow_twins_loss(ta, tb, lambd=0.01))
    assert ours == float(BarlowTwinsLoss(lambd=0.01)(ta, tb))
    # MONAI holds λ as a float32 tensor
    assert ours == pytest.approx(_barlow_direct(a, b, float(np.float32(0.01))), rel=1e-12)
    # the paper's C is the Pearson cross-correlation; MONAI's is (N − 1)/N of it (module doc; up
    # to the 1e-6 MONAI adds to each std)
    n, d = a.shape
    r = np.corrcoef(a.T, b.T)[:d, d:] * (n - 1) / n
    paper_scaled = ((1 - np.diag(r)) ** 2).sum() + 0.01 * (r[~np.eye(d, dtype=bool)] ** 2).sum()
    assert ours == pytest.approx(paper_scaled, rel=1e-4)


def test_barlow_floor_of_identical_views_is_d_over_n_squared() -> None:
    """Identical, decorrelated views: C = (N − 1)/N · I, so the loss is D / N², not 0."""
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert float(barlow_twins_loss(z, z)) == pytest.approx(2 / 16, rel=1e-4)


def _vicreg_direct(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    n, d = a.shape
    inv = sum((a[k, j] - b[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (a, b):
        mean = [sum(z[k, j] for k in range(n)) / n for j in range(d)]
        for j in range(d):
            v = sum((z[k, j] - mean[j]) ** 2 for k in range(n)) / (n - 1)
            var += max(0.0, 1.0 - np.sqrt(v + 1e-4)) / d / 2
        for i, j in itertools.product(range(d), range(d)):
            if i != j:
                c = sum((z[k, i] - mean[i]) * (z[k, j] - mean[j]) for k in range(n)) / (n - 1)
                cov += c**2 / d
    return 25 * inv + 25 * var + cov, inv, var, cov


@pytest.mark.parametrize("seed", [0, 3])
def test_vicreg_equals_a_direct_computation(seed: int) -> None:
    a, b = _pairs(seed, n=7, d=5)
    total, inv, var, cov = _vicreg_direct(a, b)
    ta, tb = torch.tensor(a), torch.tensor(b)
    loss, terms = vicreg_loss(ta, tb)
    assert float(loss) == pytest.approx(total, rel=1e-10)
    assert float(terms["invariance"]) == pytest.approx(inv, rel=1e-10)
    assert float(terms["variance"]) == pytest.approx(var, rel=1e-10)
    assert float(terms["covariance"]) == pytest.approx(cov, rel=1e-10)
    assert var > 0 and cov > 0  # both hinge and covariance are active on this input


def test_vicreg_known_answer_and_gradient() -> None:
    """Two identical views with unit-variance, uncorrelated columns: only the ε in the std is left."""
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    z = z * np.sqrt(3 / 4)  # Bessel variance 1
    terms = vicreg_terms(z, z.clone())
    assert float(terms["invariance"]) == 0 and float(terms["covariance"]) == 0
    assert float(terms["variance"]) == 0  # sqrt(1 + 1e-4) > 1: the hinge is off
    collapsed = torch.zeros(4, 2, requires_grad=True)
    loss, _ = vicreg_loss(collapsed, collapsed + 0.0)
    assert float(loss.detach()) == pytest.approx(25 * (1 - np.sqrt(1e-4)))


def test_objectives_refuse_a_batch_of_one() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(torch.zeros(1, 3), torch.zeros(1, 3))


# ----------------------------------------------------------------------------- masks
def test_patch_mask_counts_alignment_and_independence() -> None:
    grid = (2, 4, 4)
    mask = sample_patch_mask(5, grid, 0.6, np.random.default_rng(0))
    assert mask.shape == (5, *grid) and mask.dtype == bool
    assert (mask.reshape(5, -1).sum(axis=1) == round(0.6 * 32)).all()  # exactly, per phase
    assert len({m.tobytes() for m in mask}) == 5  # each phase drew its own patches
    shared = sample_patch_mask(5, grid, 0.6, np.random.default_rng(0), mode="shared")
    assert all((m == shared[0]).all() for m in shared) and shared[0].sum() == 19
    again = sample_patch_mask(5, grid, 0.6, np.random.default_rng(0))
    assert (again == mask).all()
    # on the voxel grid every (4, 4, 4) patch is all hidden or all visible, and the hidden voxel
    # fraction is the patch fraction
    voxels = expand_mask(torch.from_numpy(mask), (8, 16, 16)).numpy()
    blocks = voxels.reshape(5, 2, 4, 4, 4, 4, 4)
    assert (blocks.all(axis=(2, 4, 6)) == blocks.any(axis=(2, 4, 6))).all()
    assert (blocks[:, :, 0, :, 0, :, 0] == mask).all()
    assert voxels.mean() == pytest.approx(19 / 32)


def test_patch_mask_keeps_one_patch_each_way() -> None:
    m = sample_patch_mask(2, (1, 1, 2), 0.99, np.random.default_rng(1))
    assert (m.reshape(2, -1).sum(axis=1) == 1).all()
    with pytest.raises(ValueError, match="at least 2 patches"):
        sample_patch_mask(1, (1, 1, 1), 0.5, np.random.default_rng(0))


def test_mae_loss_reads_only_hidden_voxels_and_equals_a_direct_mean() -> None:
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 3, 2, 4, 8, 8))
    target = rng.normal(size=pred.shape)
    hidden = rng.random((2, 3, 4, 8, 8)) < 0.4
    hidden[1, 2] = False  # an absent phase: never a target
    t = [torch.tensor(v) for v in (pred, target)]
    loss = float(mae_loss(t[0], t[1], torch.tensor(hidden)))
    sq = [
        (pred[b, p, c, z, y, x] - target[b, p, c, z, y, x]) ** 2
        for b, p, c, z, y, x in itertools.product(*map(range, pred.shape))
        if hidden[b, p, z, y, x]
    ]
    assert loss == pytest.approx(np.mean(sq), rel=1e-12)
    changed = pred.copy()
    changed[~np.broadcast_to(hidden[:, :, None], pred.shape)] += 100.0  # visible voxels only
    assert float(mae_loss(torch.tensor(changed), t[1], torch.tensor(hidden))) == loss
    changed[np.broadcast_to(hidden[:, :, None], pred.shape)] += 1.0
    assert float(mae_loss(torch.tensor(changed), t[1], torch.tensor(hidden))) != loss


def test_per_patch_normalised_targets() -> None:
    rng = np.random.default_rng(2)
    target = rng.normal(3.0, 2.0, size=(1, 2, 1, 4, 4, 8))
    out = patch_normalised(torch.tensor(target), (2, 2, 4)).numpy()
    patch = target[0, 1, 0, 2:4, 0:2, 4:8]
    expected = (patch - patch.mean()) / np.sqrt(patch.var() + 1e-6)
    assert np.allclose(out[0, 1, 0, 2:4, 0:2, 4:8], expected)


def test_upsample_equals_a_stride_2_transposed_convolution() -> None:
    torch.manual_seed(0)
    up, ct = Upsample2x(6, 3), torch.nn.ConvTranspose3d(6, 3, 2, stride=2)
    with torch.no_grad():
        up.conv.weight.copy_(ct.weight.permute(1, 2, 3, 4, 0).reshape(24, 6, 1, 1, 1))
        up.conv.bias.copy_(ct.bias.repeat_interleave(8))
    x = torch.randn(2, 6, 2, 3, 4)
    assert torch.allclose(up(x), ct(x), atol=1e-6)


# ----------------------------------------------------------------------------- sparse masking
def test_masked_instance_norm_uses_visible_statistics_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(2, 3, 4, 4, 4))
    vis = (rng.random((2, 1, 4, 4, 4)) < 0.5).astype(np.float64)
    norm = torch.nn.InstanceNorm3d(3, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    out = masked_instance_norm(torch.tensor(x), torch.tensor(vis), norm.double()).detach().numpy()
    for n, c in itertools.product(range(2), range(3)):
        v = vis[n, 0] > 0
        sel = x[n, c][v]
        expect = (sel - sel.mean()) / np.sqrt(sel.var() + 1e-5) * [1, 2, 0.5][c] + [0, 1, -1][c]
        assert np.allclose(out[n, c][v], expect)
        assert (out[n, c][~v] == 0).all()


def test_sparse_masking_is_dense_when_all_visible_and_leaks_nothing_into_holes() -> None:
    model = small_std_net()
    encoder = model.encoder  # every level (the view returns the deepest only)
    x = torch.randn(3, 1, 8, 16, 16)
    plain = encoder(x)
    with sparse_masking(encoder, torch.ones(3, 1, 2, 4, 4)):
        dense = encoder(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain, dense, strict=True))
    vis = (torch.rand(3, 1, 2, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    with sparse_masking(encoder, vis):
        levels = encoder(x * expand_mask(vis, (8, 16, 16)))
    for f in levels:
        m = expand_mask(vis, f.shape[2:])
        assert (f * (1 - m)).abs().max() == 0  # hidden positions stay exactly zero
        assert (f * m).abs().max() > 0
    after = encoder(x)  # the hooks are gone
    assert all(torch.equal(a, b) for a, b in zip(plain, after, strict=True))


def test_sparse_masking_refuses_batch_norm() -> None:
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.BatchNorm3d(2))
    with (
        pytest.raises(ValueError, match="BatchNorm3d"),
        sparse_masking(net, torch.ones(1, 1, 1, 1, 2)),
    ):
        pass


def _mae_batch(b: int = 2, p: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = np.stack(
        [sample_patch_mask(p, (2, 4, 4), 0.6, np.random.default_rng(seed + i)) for i in range(b)]
    )
    present = torch.ones(b, p, dtype=torch.bool)
    present[1, 0] = False
    return {
        "image0": torch.randn(b, p, 1, 8, 16, 16, generator=g)
        * present[..., None, None, None, None],
        "present0": present,
        "hidden": torch.from_numpy(hidden),
    }


def test_mae_reconstruction_never_sees_the_hidden_voxels() -> None:
    model = small_std_net()
    net = SSLNet(
        model.ssl_encoder(), "mae", 3, 1, PretrainConfig(method="mae").to_dict(), (4, 4, 4)
    )
    batch = _mae_batch()
    pred, x, targets = net.reconstruct(batch)
    assert pred.shape == x.shape and targets.shape == (2, 3, 8, 16, 16)
    assert not targets[1, 0].any()  # the absent phase is no target
    voxels = expand_mask(batch["hidden"], (8, 16, 16))
    assert torch.equal(targets[0], voxels[0])
    changed = dict(batch)
    changed["image0"] = batch["image0"] + 50.0 * voxels.unsqueeze(2).float()
    pred2, _, _ = net.reconstruct(changed)
    assert torch.allclose(pred, pred2, atol=1e-6)  # the prediction is blind to hidden voxels
    loss, _ = net(batch)
    loss2, _ = net(changed)
    assert float(loss2.detach()) > float(loss.detach()) + 100  # ... while the loss scores them


def test_decoder_mask_token_replaces_hidden_cells() -> None:
    torch.manual_seed(0)
    dec = MAEDecoder(2, 4, 1, 4, width=8)
    feats = torch.randn(1, 2, 4, 1, 2, 2)
    vis = torch.ones(1, 2, 1, 2, 2)
    vis[0, 1, 0, 0, 0] = 0
    other = feats.clone()
    other[0, 1, :, 0, 0, 0] += 10.0
    assert torch.equal(dec(feats, vis), dec(other, vis))
    assert dec(feats, vis).shape == (1, 2, 1, 4, 8, 8)


# ----------------------------------------------------------------------------- interface
def test_std_net_encoder_view_shares_the_models_parameters_by_name() -> None:
    model = small_std_net()
    view = model.ssl_encoder()
    prefix = model.encoder_prefix
    expected = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    got = view.state_dict()
    assert list(got) == list(expected) and all(got[k] is not None for k in got)
    own = dict(model.named_parameters())
    assert all(p is own[prefix + n] for n, p in view.named_parameters())
    x = torch.randn(2, 1, 8, 16, 16)
    assert view(x).shape == (2, view.out_channels, 2, 4, 4) and view.stride == 4
    assert torch.equal(view(x), model.encoder(x)[-1])
    view.eval()
    assert not model.encoder.training


@pytest.mark.parametrize("name", ["resnet3d18", "unet_channels", "miff_spm"])
def test_models_without_a_per_phase_encoder_say_so(name: str) -> None:
    model = create_model(name, 2, ["NC", "ART"], in_channels=1)
    with pytest.raises(NotImplementedError, match="no per-phase encoder"):
        model.ssl_encoder()


def test_pooled_features_average_the_present_phases_only() -> None:
    model = small_std_net(phases=2)
    view = model.ssl_encoder().eval()
    x = torch.randn(2, 2, 1, 8, 16, 16)
    present = torch.tensor([[True, True], [True, False]])
    out = pooled_features(view, x, present)
    with torch.no_grad():
        per = view(x.flatten(0, 1)).mean(dim=(2, 3, 4)).view(2, 2, -1)
    assert torch.allclose(out[0], per[0].mean(0), atol=1e-6)
    assert torch.allclose(out[1], per[1, 0], atol=1e-6)


def test_probe_auc_equals_a_direct_grouped_cross_validation() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from liverphase.data.splits import patient_folds

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"] * 8
    patients = [f"P{i // 2}" for i in range(24)]  # two studies per patient
    feats = rng.normal(size=(24, 5)) + np.array([["abc".index(x)] * 5 for x in labels]) * 0.8
    ours = probe_auc(feats, labels, patients, folds=3, seed=1)
    ids = [str(i) for i in range(24)]
    y = np.array(["abc".index(x) for x in labels])
    probs = np.zeros((24, 3))
    for fold in patient_folds(ids, patients, labels, k=3, seed=1):
        tr, te = [int(i) for i in fold["train"]], [int(i) for i in fold["test"]]
        assert not {patients[i] for i in tr} & {patients[i] for i in te}
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        probs[te] = clf.fit(feats[tr], y[tr]).predict_proba(feats[te])
    assert ours == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert 0.7 < ours <= 1.0
    assert np.isnan(probe_auc(feats, ["a"] * 24, patients))


def test_mae_gradients_are_the_same_with_gradient_checkpointing() -> None:
    """Checkpointing recomputes in backward, after the masking hooks are gone: it is off inside."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = create_model(
            "std_net", 2, ["PRE", "ART", "PV"], in_channels=1, base_channels=4, scales=3,
            checkpointing=checkpointing,
        )  # fmt: skip
        torch.manual_seed(1)
        config = PretrainConfig(method="mae").to_dict()
        net = SSLNet(model.ssl_encoder(), "mae", 3, 1, config, (4, 4, 4))
        loss, _ = net(_mae_batch())
        loss.backward()
        grads.append([p.grad.clone() for p in model.encoder.parameters()])
        assert model.encoder.checkpointing is checkpointing  # restored afterwards
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
