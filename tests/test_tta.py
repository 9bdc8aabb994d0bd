"""Flip test-time augmentation: the averaged prediction is flip-invariant and equals the hand mean."""

from __future__ import annotations

import pytest
import torch

from liverphase.models import create_model
from liverphase.models.tta import flip_combinations, lesion_probability, predict_with_flips

PHASES = ("NC", "ART", "PV")


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 1, 16, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_flip_combinations() -> None:
    assert flip_combinations(()) == [()]
    assert flip_combinations((1, 2)) == [(), (1,), (2,), (1, 2)]


def test_no_axes_is_the_plain_model() -> None:
    torch.manual_seed(0)
    model = create_model("resnet2d_avg", num_classes=2, phases=PHASES, in_channels=1).eval()
    x = _x()
    with torch.no_grad():
        probs, seg = predict_with_flips(model, x, ())
        plain = model(x).logits.softmax(dim=1)
    assert seg is None
    torch.testing.assert_close(probs, plain)


def test_flip_average_is_the_mean_of_views_and_flip_invariant() -> None:
    torch.manual_seed(0)
    model = create_model("resnet2d_avg", num_classes=2, phases=PHASES, in_channels=1).eval()
    x = _x(1)
    with torch.no_grad():
        probs, _ = predict_with_flips(model, x, (1, 2))
        views = [x, x.flip(4), x.flip(5), x.flip([4, 5])]
        by_hand = torch.stack([model(v).logits.softmax(dim=1) for v in views]).mean(0)
        flipped, _ = predict_with_flips(model, x.flip(4), (1, 2))
        plain = model(x).logits.softmax(dim=1)
    torch.testing.assert_close(probs, by_hand)
    torch.testing.assert_close(flipped, probs, atol=1e-5, rtol=1e-5)
    # a random network is not flip-symmetric: the average really differs from one view
    assert (plain - probs).abs().max() > 1e-4


def test_segmentation_logits_are_flipped_back() -> None:
    torch.manual_seed(0)
    model = create_model("unet_channels", num_classes=2, phases=PHASES, in_channels=1).eval()
    x = _x(2)
    with torch.no_grad():
        _, seg = predict_with_flips(model, x, (2,))
        _, seg_of_flipped = predict_with_flips(model, x.flip(5), (2,))
    assert seg is not None and seg.shape[-3:] == x.shape[-3:]
    # the mask of the mirrored study is the mirrored mask
    torch.testing.assert_close(seg_of_flipped, seg.flip(4), atol=1e-4, rtol=1e-4)


def test_bad_axis() -> None:
    model = create_model("resnet2d_avg", num_classes=2, phases=PHASES, in_channels=1)
    with pytest.raises(ValueError, match="flip axes"):
        predict_with_flips(model, _x(), (3,))


def test_lesion_probability_of_two_channel_and_one_channel_logits() -> None:
    two = torch.zeros(2, 2, 1, 1, 2)
    two[0, 1, 0, 0, 0] = 2.0  # softmax foreground = sigmoid(2)
    two[1, 0, 0, 0, 1] = 1.0  # foreground = sigmoid(-1)
    prob = lesion_probability(two)
    assert prob.shape == (2, 1, 1, 2)
    expected = torch.tensor([[[[torch.sigmoid(torch.tensor(2.0)), 0.5]]], [[[0.5, 0.0]]]])
    expected[1, 0, 0, 1] = torch.sigmoid(torch.tensor(-1.0))
    torch.testing.assert_close(prob, expected)
    # a single-channel head is read as a sigmoid; three channels sum the foreground classes
    torch.testing.assert_close(lesion_probability(two[:, 1:]), torch.sigmoid(two[:, 1]))
    three = torch.randn(1, 3, 2, 2, 2)
    torch.testing.assert_close(lesion_probability(three), 1 - three.softmax(1)[:, 0])
