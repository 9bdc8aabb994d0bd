"""Tiny models for the trainer and bundle tests.

They are registered only while a test module needs them (the `tiny_models` fixture calls
`register()` and `unregister()`), so test modules that loop over `list_models()` never see them.
"""

from __future__ import annotations

import torch
from torch import nn

from liverphase.models import registry
from liverphase.models.registry import ModelOutput, MultiPhaseModel, register_model


class TinyModel(MultiPhaseModel):
    """Phases stacked as channels → conv → ReLU → global mean → (dropout) → linear."""

    def __init__(self, num_classes, phases, in_channels=1, width=4, dropout=0.0):
        super().__init__(num_classes, phases, in_channels)
        self.conv = nn.Conv3d(len(phases) * in_channels, width, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b, p, c, d, h, w = x.shape
        return torch.relu(self.conv(x.reshape(b, p * c, d, h, w)))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        feats = self.maps(x).mean((2, 3, 4))
        return ModelOutput(logits=self.head(self.drop(feats)), features=feats)


class TinyOtherModel(MultiPhaseModel):
    """A different tiny network (for 'weights of another model')."""

    def __init__(self, num_classes, phases, in_channels=1):
        super().__init__(num_classes, phases, in_channels)
        self.proj = nn.Linear(len(phases) * in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        self.check_input(x)
        feats = x.mean((3, 4, 5)).flatten(1)
        return ModelOutput(logits=self.proj(feats), features=feats)


class TinySegModel(TinyModel):
    """TinyModel plus a 1x1x1 conv segmentation head (2 classes)."""

    segments = True

    def __init__(self, num_classes, phases, in_channels=1, width=4):
        super().__init__(num_classes, phases, in_channels, width)
        self.seg = nn.Conv3d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        maps = self.maps(x)
        feats = maps.mean((2, 3, 4))
        return ModelOutput(logits=self.head(feats), features=feats, seg_logits=self.seg(maps))


TINY = {
    "tiny_test_model": (TinyModel, False),
    "tiny_other_test_model": (TinyOtherModel, False),
    "tiny_seg_test_model": (TinySegModel, True),
}


def register() -> None:
    """Register the tiny models (idempotent)."""
    for name, (cls, segments) in TINY.items():
        if registry._REGISTRY.get(name) is not cls:
            register_model(name, segments=segments, description="tests only")(cls)


def unregister() -> None:
    """Take them out of the registry again (the registry has no public way: tests only)."""
    for name in TINY:
        registry._REGISTRY.pop(name, None)
        registry._INFO.pop(name, None)
