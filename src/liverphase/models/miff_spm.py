"""MIFF+SPM: the four-phase CT network (multi-phase interactive feature fusion + spatio-temporal module).

Pipeline for x (B, P, C, D, H, W):
1. A 2D ResNet18 (`encoders.ResNet2d`, 7×7 stem with stride 2 + max-pool by default) runs with shared
   weights on every slice of every phase (B·D·P images of C×H×W).
2. MIFF: after each of the four stages, `fusion.InteractivePerception` re-weights each phase's feature
   maps by the CBAM channel and spatial weights of its ring neighbours (Eq. 1).
3. Each image's last feature map is global-average-pooled to a 512-d slice vector. Per-phase auxiliary
   heads give X_phase (B, P, K): a linear head on the slice vectors averaged over slices. For a linear
   head this equals averaging the per-slice logits, and it is cheaper.
4. SPM (`temporal.SpatioTemporalModule`): per slice, the P phase vectors concatenated in the model's
   phase order (B, D, P·512) → 1D residual network along slices → GRU over slices → linear → X_f.
   With `spm=False`, X_f is a linear head on the slice vectors averaged over slices and phases.
5. logits = (1 − λ)·X_f + λ·mean_P(X_phase), λ = `mtl_lambda`; the paper's Eq. 2 is cross-entropy on
   this mix (`train.losses.multitask_loss`), so training and inference use the same logits.

Design choices where the paper is open (see also fusion.py and temporal.py):
- The per-phase heads share one linear layer by default (`shared_phase_heads=True`), so that with
  `miff=False, spm=False, mtl_lambda=1` this model computes exactly `resnet2d_avg` (same module names:
  a `resnet2d_avg` state dict loads onto it, only `head.*` is left over) and is phase-order invariant;
  with MIFF on, the per-phase CBAM modules and the ring make the output depend on phase order.
- `mtl_lambda` defaults to 0.5 (the paper's value is not at hand); features are the vector X_f is
  computed from (the SPM's pooled GRU output, 256-d; 512-d with `spm=False`).
- MIFF needs at least 2 phases; 2 phases are each other's two neighbours, 3–4 form a ring.
- `region_kinetics=True` (ours, off by default) reads the lesion through the mask it is given: the
  input's last channel is then the lesion ROI (preprocessing `roi_channel: true`, which `cv` sets for
  this option), the encoder sees it as one more channel, and the mean intensity of lesion core, rim
  and surrounding parenchyma per phase and window (`heads.region_enhancement`, the ROI reading of the
  kinetics baseline) goes through its own linear layer `region_head`, whose logits are added to
  Eq. 2's. The learned kinetics prior trains at `head_lr_scale` × the network's rate
  (`head_prefix`), since a linear read-out of a few dozen features is underfitted at 3e-4
  (benchmarks/results/cv_std240). The paper's network is unchanged when it is off.
  `region_reading="radial"` reads three bands of the lesion's normalised radius instead of core and
  rim (`heads.lesion_region_weights`).
- `checkpointing` and `slice_chunk` bound memory (see encoders.SliceEncoder); chunks split along slices
  and keep all phases of a slice together, which the fusion needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from liverphase.models.encoders import ResNet2d, SliceEncoder
from liverphase.models.fusion import InteractivePerception
from liverphase.models.heads import PhaseHeads, mix_logits, region_count, region_enhancement
from liverphase.models.pretrained import load_pretrained
from liverphase.models.registry import ModelOutput, MultiPhaseModel, register_model
from liverphase.models.temporal import SpatioTemporalModule


@register_model(
    "miff_spm", description="2D ResNet18 per slice + MIFF (CBAM ring) + SPM (1D ResNet, GRU)"
)
class MiffSpm(MultiPhaseModel):
    """MIFF+SPM with its ablation switches `miff`, `spm` and `mtl_lambda`."""

    min_phases = 2

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        miff: bool = True,
        spm: bool = True,
        mtl_lambda: float = 0.5,
        stem_stride: int = 2,
        pretrained: str | Path | None = None,
        checkpointing: bool = False,
        slice_chunk: int | None = None,
        shared_cbam: bool = False,
        shared_phase_heads: bool = True,
        spm_hidden: int = 256,
        spm_pool: str = "mean",
        region_kinetics: bool = False,
        region_reading: str = "shells",
    ) -> None:
        super().__init__(num_classes, phases, in_channels)
        if not 0.0 <= mtl_lambda <= 1.0:
            raise ValueError(f"mtl_lambda must lie in [0, 1], got {mtl_lambda}")
        if region_kinetics and in_channels < 2:
            raise ValueError(
                "region_kinetics reads the last input channel as the lesion ROI "
                f"(preprocessing roi_channel): needs in_channels >= 2, got {in_channels}"
            )
        regions_per_channel = region_count(region_reading)  # refuses an unknown reading either way
        self.mtl_lambda = float(mtl_lambda)
        backbone = ResNet2d(in_channels, stem_stride)
        fusion = None
        if miff:
            fusion = [
                InteractivePerception(c, self.phases, shared=shared_cbam)
                for c in backbone.stage_channels
            ]
        self.encoder = SliceEncoder(backbone, fusion, checkpointing, slice_chunk)
        width = backbone.out_channels
        self.phase_heads = PhaseHeads(width, num_classes, len(self.phases), shared_phase_heads)
        self.spm: SpatioTemporalModule | None = None
        if spm:
            self.spm = SpatioTemporalModule(len(self.phases) * width, spm_hidden, pool=spm_pool)
            width = spm_hidden
        self.head = nn.Linear(width, num_classes)
        self.region_head: nn.Linear | None = None
        if region_kinetics:
            regions = regions_per_channel * len(self.phases) * (in_channels - 1)
            self.region_head = nn.Linear(regions, num_classes)
            self.head_prefix, self.reads_roi = "region_head.", True
        self.region_reading = region_reading
        if pretrained:
            load_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x (B, P, C, D, H, W) → logits, SPM features, per-phase logits."""
        self.check_input(x)
        v = self.encoder(x)  # (B, P, D, F)
        phase_logits = self.phase_heads(v.mean(dim=2))
        if self.spm is not None:
            features = self.spm(v.permute(0, 2, 1, 3).flatten(2))  # (B, D, P·F) → (B, hidden)
        else:
            features = v.mean(dim=(1, 2))
        logits = mix_logits(self.head(features), phase_logits, self.mtl_lambda)
        if self.region_head is not None:
            roi = x[:, :, -1:].amax(dim=1).float()  # (B, 1, D, H, W): the same mask in every phase
            regions = region_enhancement(x[:, :, :-1].float(), roi, reading=self.region_reading)
            logits = logits + self.region_head(regions.to(logits.dtype))
        return ModelOutput(logits=logits, features=features, phase_logits=phase_logits)
