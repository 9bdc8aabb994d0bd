"""cirrhosis_msa: shapes, sequence-specific attention, missing sequences, the ordinal head, slice logits."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch.nn import functional as F

from liverphase.models import create_model
from liverphase.models.heads import OrdinalHead

SEQS = ("T1W", "T2W")
GRID = (8, 32, 32)
SMALL = {"width": 8, "blocks": 1, "feature_dim": 16}


def model(p: int = 2, k: int = 4, **options):
    """A small cirrhosis_msa in eval mode, seeded."""
    torch.manual_seed(0)
    return create_model("cirrhosis_msa", k, SEQS[:p], in_channels=1, **{**SMALL, **options}).eval()


def batch(b: int, p: int, seed: int = 0) -> torch.Tensor:
    """A fixed random batch (B, P, 1, D, H, W)."""
    return torch.randn(b, p, 1, *GRID, generator=torch.Generator().manual_seed(seed))


def direct_class_probs(s: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Cumulative-link class probabilities from P(y > k) = σ(s − θ_k), in float64, no log tricks."""
    above = torch.sigmoid(s.double()[:, None] - theta.double()[None])  # (N, K-1)
    ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
    cum = torch.cat([ones, above, zeros], dim=1)  # P(y > k) for k = -1 .. K-1
    return cum[:, :-1] - cum[:, 1:]


def slice_weights(attention: torch.Tensor) -> torch.Tensor:
    """w[b, s] = mean over present sequences of a[b, p, s] (absent rows are zeros)."""
    present = (attention.sum(dim=2) > 0).sum(dim=1, keepdim=True)
    return attention.sum(dim=1) / present


@pytest.mark.parametrize("ordinal", [False, True])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("p", [1, 2])
def test_output_shapes(p: int, dims: int, ordinal: bool):
    m = model(p, k=4, dims=dims, ordinal=ordinal)
    with torch.no_grad():
        out = m(batch(3, p))
    assert out.logits.shape == (3, 4) and out.features.shape == (3, 16)
    assert out.phase_logits is None and out.seg_logits is None
    assert torch.isfinite(out.logits).all()
    if dims == 2:
        assert out.slice_logits is not None and out.slice_logits.shape == (3, GRID[0], 4)
        assert m.last_attention is not None and m.last_attention.shape == (3, p, GRID[0])
        assert not m.last_attention.requires_grad
    else:
        assert out.slice_logits is None and m.last_attention is None
    if ordinal:  # the outputs are log-probabilities
        torch.testing.assert_close(out.logits.exp().sum(1), torch.ones(3))
    assert isinstance(m.head, OrdinalHead) == ordinal


def test_attention_sums_to_one_over_slices_and_is_zero_for_an_absent_sequence():
    m = model()
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        m(batch(3, 2), phase_mask=mask)
    a = m.last_attention
    assert (a >= 0).all()
    sums = a.sum(dim=2)
    torch.testing.assert_close(sums[mask], torch.ones(int(mask.sum())))
    assert torch.equal(a[~mask], torch.zeros(int((~mask).sum()), GRID[0]))


@pytest.mark.parametrize("dims", [2, 3])
def test_a_masked_sequence_changes_nothing(dims: int):
    m = model(dims=dims)
    x = batch(2, 2)
    mask = torch.tensor([[True, False], [True, True]])
    zeroed, garbage = x.clone(), x.clone()
    zeroed[0, 1] = 0
    garbage[0, 1] = 1e4 * torch.randn(1, *GRID)
    with torch.no_grad():
        a, b = m(zeroed, phase_mask=mask), m(garbage, phase_mask=mask)
        alone = m(x[:1], phase_mask=mask[:1])
        full_alone = m(x[1:])
    assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)
    if dims == 2:
        assert torch.equal(a.slice_logits, b.slice_logits)
    # the sample missing T2W and the complete one each give what they give on their own
    torch.testing.assert_close(a.logits[:1], alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits[1:], full_alone.logits, atol=1e-5, rtol=1e-5)
    # an all-present mask is the same as no mask
    with torch.no_grad():
        assert torch.equal(m(x, torch.ones(2, 2, dtype=torch.bool)).logits, m(x).logits)


def test_an_absent_sequence_stays_out_of_the_encoder_batch_statistics():
    m = model().train()
    x = batch(2, 2)
    mask = torch.tensor([[True, False], [True, True]])
    garbage = x.clone()
    garbage[0, 1] = 50 + 1e3 * torch.randn(1, *GRID)
    a_model, b_model = m, copy.deepcopy(m)
    a, b = a_model(x, phase_mask=mask), b_model(garbage, phase_mask=mask)
    assert torch.equal(a.logits, b.logits)  # training mode: BatchNorm uses batch statistics
    bn_a, bn_b = a_model.encoder.bn1, b_model.encoder.bn1
    assert torch.equal(bn_a.running_mean, bn_b.running_mean)
    assert torch.equal(bn_a.running_var, bn_b.running_var)


def test_every_sample_needs_a_present_sequence():
    m = model()
    with pytest.raises(ValueError, match="at least one present"):
        m(batch(2, 2), phase_mask=torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="phase_mask must be"):
        m(batch(2, 2), phase_mask=torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("dims", [2, 3])
def test_sequences_have_their_own_attention_parameters(dims: int):
    m = model(dims=dims)
    t1 = dict(m.gates["T1W"].named_parameters())
    t2 = dict(m.gates["T2W"].named_parameters())
    assert all(t1[n].data_ptr() != t2[n].data_ptr() for n in t1)
    if dims == 2:
        a1, a2 = m.attention["T1W"], m.attention["T2W"]
        assert all(
            p.data_ptr() != q.data_ptr()
            for p, q in zip(a1.parameters(), a2.parameters(), strict=True)
        )
    x = batch(2, 2)
    only_t1 = torch.tensor([[True, False], [True, False]])
    with torch.no_grad():
        before_masked, before_full = m(x, phase_mask=only_t1).logits, m(x).logits
        for prm in m.gates["T2W"].parameters():
            prm.add_(torch.randn_like(prm))
        if dims == 2:
            for prm in m.attention["T2W"].parameters():
                prm.add_(torch.randn_like(prm))
        after_masked, after_full = m(x, phase_mask=only_t1).logits, m(x).logits
        assert torch.equal(before_masked, after_masked)  # T2W absent: its weights do not count
        assert not torch.allclose(before_full, after_full)  # T2W present: they do
        m.gates["T1W"].fc2.bias.add_(1.0)
        assert not torch.allclose(after_masked, m(x, phase_mask=only_t1).logits)


def test_an_absent_sequence_modules_get_no_gradient():
    m = model().train()
    x, y = batch(2, 2), torch.tensor([0, 3])
    F.cross_entropy(
        m(x, phase_mask=torch.tensor([[True, False], [True, False]])).logits, y
    ).backward()
    for name in ("gates", "attention"):
        for prm in getattr(m, name)["T2W"].parameters():
            assert prm.grad is None or not prm.grad.any()
        assert any(prm.grad.abs().sum() > 0 for prm in getattr(m, name)["T1W"].parameters())


def float64_thresholds(head: OrdinalHead) -> torch.Tensor:
    """θ_1 + cumsum(softplus(δ)) from the head's parameters, in float64."""
    theta1 = head.theta1.detach().double()
    if head.gaps is None:
        return theta1
    return torch.cat([theta1, theta1 + torch.cumsum(F.softplus(head.gaps.detach().double()), 0)])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_ordinal_head_is_the_cumulative_link_model(k: int):
    torch.manual_seed(k)
    head = OrdinalHead(6, k)
    with torch.no_grad():  # unequal gaps, scores spread over several units
        if head.gaps is not None:
            head.gaps.copy_(torch.linspace(-3.0, 1.5, k - 2))
        head.fc.weight.mul_(5.0)
    z = torch.randn(64, 6)
    z[0] = 40.0 * head.fc.weight[0] / head.fc.weight.norm()  # extreme scores: s = ±40
    z[1] = -z[0]
    logits = head(z)
    theta, s = float64_thresholds(head), head.score(z).double()
    torch.testing.assert_close(head.thresholds().double(), theta)
    assert torch.isfinite(logits).all()
    assert (theta.diff() > 0).all()
    probs = direct_class_probs(s, theta)
    torch.testing.assert_close(logits.softmax(dim=1).double(), probs, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(logits.exp().sum(dim=1), torch.ones(64))
    above = 1 - probs.cumsum(dim=1)[:, :-1]  # P(y > k) from the class probabilities
    assert (above.diff(dim=1) <= 1e-12).all()  # non-increasing in k
    torch.testing.assert_close(above, torch.sigmoid(s[:, None] - theta))
    # NLL by hand on the ordinary rows (at s = ±40 the naive difference of sigmoids rounds to 0)
    y = torch.randint(0, k, (62,), generator=torch.Generator().manual_seed(1))
    nll = -torch.log(probs[2:][torch.arange(62), y]).mean()
    torch.testing.assert_close(F.cross_entropy(logits[2:], y).double(), nll, atol=1e-5, rtol=1e-5)


def test_ordinal_head_stays_finite_at_extreme_scores_and_tiny_gaps():
    head = OrdinalHead(1, 3)
    with torch.no_grad():
        head.gaps.fill_(-30.0)  # gap softplus(-30) ≈ 9.4e-14: vanishes when added to θ_1 in float32
        head.fc.weight.fill_(1.0)
    s = torch.tensor([[-80.0], [0.0], [80.0]])
    logits = head(s)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.exp().sum(dim=1), torch.ones(3))
    # the middle class at s = θ_1: σ'(0) · gap = gap / 4, read in log space
    theta1 = head.theta1.item()
    mid = head(torch.tensor([[theta1]]))[0, 1].item()
    assert mid == pytest.approx(math.log(0.25 * math.log1p(math.exp(-30.0))), rel=1e-5)
    # at s = -80 nearly all mass is on class 0, at +80 on class 2
    assert logits[0, 0] > -1e-6 and logits[2, 2] > -1e-6
    # a gap that underflows to 0 (clamped) and one that is tiny: finite values and gradients
    with torch.no_grad():
        head.gaps.fill_(-200.0)
    loss = -head(torch.tensor([[theta1]]))[0, 1]
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_ordinal_head_gradients_match_finite_differences():
    torch.manual_seed(0)
    head = OrdinalHead(3, 4).double()
    with torch.no_grad():
        head.gaps.copy_(torch.tensor([-2.0, 0.5]))
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1])
    assert torch.autograd.gradcheck(lambda v: F.cross_entropy(head(v), y), (z,))
    params = (head.theta1, head.gaps)
    assert torch.autograd.gradcheck(
        lambda t, g: F.cross_entropy(
            torch.func.functional_call(head, {"theta1": t, "gaps": g}, (z.detach(),)), y
        ),
        params,
    )


def test_ordinal_head_with_two_classes_is_logistic_regression():
    head = OrdinalHead(3, 2)
    assert head.gaps is None and head.thresholds().shape == (1,)
    z = torch.randn(10, 3)
    s = head.score(z) - head.theta1
    torch.testing.assert_close(head(z), torch.stack([F.logsigmoid(-s), F.logsigmoid(s)], 1))


def test_ordinal_thresholds_start_at_equal_class_probabilities():
    head = OrdinalHead(4, 4)
    torch.testing.assert_close(head.log_probs(torch.zeros(1)).exp(), torch.full((1, 4), 0.25))


@pytest.mark.parametrize("ordinal", [False, True])
def test_scan_logit_is_the_attention_weighted_mean_of_slice_logits(ordinal: bool):
    m = model(ordinal=ordinal)
    mask = torch.tensor([[True, True], [False, True], [True, False]])
    with torch.no_grad():
        out = m(batch(3, 2, seed=4), phase_mask=mask)
    w = slice_weights(m.last_attention)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))
    if not ordinal:
        pooled = torch.einsum("bs,bsk->bk", w, out.slice_logits)
        torch.testing.assert_close(out.logits, pooled, atol=1e-5, rtol=1e-5)
        return

    def score(logits: torch.Tensor) -> torch.Tensor:
        # s = θ_1 + log P(y > 0) − log P(y = 0): the latent score read back from log-probabilities
        return m.head.theta1 + torch.logsumexp(logits[..., 1:], -1) - logits[..., 0]

    torch.testing.assert_close(score(out.logits), m.head.score(out.features))
    pooled = (w * score(out.slice_logits)).sum(dim=1)
    torch.testing.assert_close(score(out.logits), pooled, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_learns_a_toy_task_and_gradients_reach_the_encoder(dims: int):
    # class = whether T2W is bright in the middle slices; T1W is noise
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, 1, *GRID, generator=g) * 0.3
    y = torch.tensor([0, 1] * 4)
    x[y == 1, 1, :, 2:6, 8:24, 8:24] += 2.0
    m = model(k=2, dims=dims).train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(m(x).logits, y)
        loss.backward()
        if step == 0:
            grad = m.encoder.conv1.weight.grad
            assert grad is not None and grad.abs().sum() > 0
            assert m.encoder.layer1[0].conv1.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.5 * losses[0], losses


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="dims"):
        model(dims=4)
    with pytest.raises(ValueError, match="scales"):
        model(scales=5)
    with pytest.raises(ValueError, match="unknown option"):
        model(slice_chunk=4)
    with pytest.raises(ValueError, match="distinct"):
        create_model("cirrhosis_msa", 2, ["a.b", "a_b"])


def test_sequence_names_with_dots_get_their_own_modules():
    names = ["C+A", "In.Phase", "keys"]
    m = create_model("cirrhosis_msa", 3, names, in_channels=1, **SMALL).eval()
    assert list(m.gates) == ["C+A", "In_Phase", "keys_"]
    with torch.no_grad():
        x = torch.randn(1, 3, 1, *GRID)
        assert m(x).logits.shape == (1, 3)


def test_ordinal_head_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    head = OrdinalHead(4, 4).eval()
    with torch.no_grad():
        head.gaps.copy_(torch.tensor([-20.0, 3.0]))  # one tiny gap: the log-space branch
    z = 5 * torch.randn(6, 4)
    path = tmp_path / "head.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (z,), str(path), input_names=["z"], opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path)).run(None, {"z": z.numpy()})[0]
    with torch.no_grad():
        np_expected = head(z).numpy()
    assert abs(got - np_expected).max() < 1e-4
