"""The network pretraining optimises: a model's per-phase encoder plus the method's throwaway head.

- `barlow` / `vicreg`: each view → encoder on every present phase alone → global average pool →
  mean over the present phases → projector MLP → Barlow Twins or VICReg loss between the views.
- `mae`: the hidden patches of every present phase zero-filled → encoder under `sparse_masking`
  → deepest maps (hidden cells and absent phases get the decoder's mask token) → `MAEDecoder` →
  mean squared error on the hidden voxels of the present phases.
Only the encoder is kept (the encoder bundle); projector and decoder are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from liverphase.models.registry import EncoderView
from liverphase.ssl.masking import MAEDecoder, expand_mask, mae_loss, sparse_masking
from liverphase.ssl.objectives import Projector, barlow_twins_loss, vicreg_loss
from liverphase.ssl.probe import pooled_features

METHODS = ("mae", "barlow", "vicreg")


class SSLNet(nn.Module):
    """Encoder + projector (two-view methods) or encoder + decoder (mae); `forward(batch)` → loss."""

    def __init__(
        self,
        encoder: EncoderView,
        method: str,
        phases: int,
        channels: int,
        options: dict[str, Any],
        patch: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.options = dict(options)
        self.encoder = encoder
        self.patch = tuple(patch) if patch is not None else None
        if method == "mae":
            if self.patch is None:
                raise ValueError("mae needs the patch size")
            self.decoder = MAEDecoder(
                phases, encoder.out_channels, channels, encoder.stride, options["decoder_width"]
            )
        else:
            self.projector = Projector(
                encoder.out_channels,
                options["projector_hidden"],
                options["projector_out"],
                options["projector_layers"],
            )

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on a batch of `PretrainDataset` and its terms (floats, for the log)."""
        if self.method == "mae":
            return self._mae(batch)
        device = self.encoder_device()
        z = [
            self.projector(
                pooled_features(
                    self.encoder,
                    batch[f"image{v}"].to(device),
                    batch[f"present{v}"].to(device),
                )
            )
            for v in (0, 1)
        ]
        if self.method == "barlow":
            return barlow_twins_loss(z[0], z[1], self.options["barlow_lambda"]), {}
        sim, var, cov = self.options["vicreg_weights"]
        loss, terms = vicreg_loss(z[0], z[1], sim, var, cov)
        return loss, {k: float(v) for k, v in terms.items()}

    def _mae(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        pred, x, targets = self.reconstruct(batch)
        return mae_loss(pred, x, targets, self.patch, self.options["norm_targets"]), {}

    def reconstruct(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE: the reconstruction (B, P, C, D, H, W) of a batch, its input, and the voxels the loss
        reads (B, P, D, H, W) bool: hidden, in a present phase."""
        device = self.encoder_device()
        x = batch["image0"].to(device)
        present = batch["present0"].to(device)
        hidden = batch["hidden"].to(device)
        b, p, c, *spatial = x.shape
        box = present.view(b, p, 1, 1, 1)
        visible = (~hidden & box).to(x.dtype)  # (B, P, gd, gh, gw); absent phases all hidden
        keep = present.reshape(-1)
        vis_rows = visible.flatten(0, 1)[keep].unsqueeze(1)  # (n, 1, gd, gh, gw)
        rows = x.flatten(0, 1)[keep] * expand_mask(vis_rows, spatial)
        with sparse_masking(self.encoder, vis_rows):
            f = self.encoder(rows)
        idx = keep.nonzero().squeeze(1)
        feats = f.new_zeros(b * p, *f.shape[1:]).index_copy(0, idx, f)
        feats = feats.view(b, p, *f.shape[1:])
        pred = self.decoder(feats, expand_mask(visible, f.shape[2:]))
        targets = expand_mask((hidden & box).to(torch.uint8), spatial).bool()
        return pred, x, targets

    def encoder_device(self) -> torch.device:
        """Where the encoder's parameters live."""
        return next(self.encoder.parameters()).device
