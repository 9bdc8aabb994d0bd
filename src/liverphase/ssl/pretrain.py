"""The pretraining loop: a model's per-phase encoder trained on every study (labels ignored).

`pretrain(items, out, model_factory, config, meta)` reads cached studies (the trainer's items: the
same preprocessing cache cv uses), trains the encoder with `config.method` (mae | barlow | vicreg,
see `ssl.net`), and after every epoch writes OUT/checkpoint (resumable: network, optimiser, epoch),
OUT/bundle (the encoder bundle, `ssl.bundle`) and OUT/log.csv (loss, the method's terms, linear-probe
AUC on the labeled studies, lr, seconds, samples/s, peak memory). Deterministic on CPU for a seed:
model initialisation follows `torch.manual_seed(seed)`, and sample order, augmentation and masks are
drawn from (seed, epoch, study). The learning rate is AdamW's with a linear warm-up over
`warmup_epochs` and a cosine decay to zero, set per epoch.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from liverphase.atomic import atomic_write_text
from liverphase.config import ConfigBase
from liverphase.data.augment import AugmentConfig
from liverphase.data.dataset import CachedStudyDataset
from liverphase.errors import ConfigError, DatasetError, InputFileError
from liverphase.io.nifti import NnUNetDataset
from liverphase.models.registry import MultiPhaseModel
from liverphase.ssl.bundle import model_encoder, save_encoder_bundle
from liverphase.ssl.checkpoint import (
    check_same_settings,
    load_checkpoint,
    nan_to_none,
    save_checkpoint,
)
from liverphase.ssl.masking import MASK_MODES, patch_grid
from liverphase.ssl.net import METHODS, SSLNet
from liverphase.ssl.probe import encode, probe_auc
from liverphase.ssl.views import PretrainDataset

EpochCallback = Callable[[int, dict[str, Any]], None]


def _ssl_augment() -> AugmentConfig:
    return AugmentConfig(phase_dropout_prob=0.25)


@dataclass
class PretrainConfig(ConfigBase):
    """Settings of one pretraining run (the method's own settings apply to that method only)."""

    method: str = "vicreg"
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    grad_clip: float = 0.0
    seed: int = 0
    num_workers: int = 0
    # mae: hidden fraction of the patches, per phase or shared, patch size (empty: the encoder's
    # stride on every axis, one deepest-map cell), per-patch normalised targets, decoder width
    mask_ratio: float = 0.6
    mask_mode: str = "independent"
    patch_size: tuple[int, ...] = ()
    norm_targets: bool = False
    decoder_width: int = 64
    # barlow / vicreg: projector, loss weights and the view transforms beyond augment_params
    projector_hidden: int = 512
    projector_out: int = 512
    projector_layers: int = 3
    barlow_lambda: float = 5e-3
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    timing_jitter: float = 0.2
    # flips, rotation, intensity, noise, per-phase shift, phase dropout (not for mae)
    augment_params: AugmentConfig = field(default_factory=_ssl_augment)
    # linear probe on the labeled studies every `probe_every` epochs (0: never)
    probe_every: int = 1
    probe_folds: int = 5

    def validate(self) -> None:
        """Check choices and ranges; raise ConfigError naming the field."""
        for name, allowed in (("method", METHODS), ("mask_mode", MASK_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"must be one of {list(allowed)}, got {getattr(self, name)!r}", name
                )
        for name in ("epochs", "batch_size", "decoder_width", "projector_hidden", "projector_out"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", name)
        for name in ("warmup_epochs", "grad_clip", "num_workers", "weight_decay", "probe_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", name)
        if self.lr <= 0:
            raise ConfigError(f"must be > 0, got {self.lr}", "lr")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"must lie in (0, 1), got {self.mask_ratio}", "mask_ratio")
        if self.patch_size and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
            raise ConfigError(
                f"needs 3 positive sizes (D, H, W), got {self.patch_size}", "patch_size"
            )
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"needs 0 < low <= high <= 1, got {self.crop_scale}", "crop_scale")
        if not 0.0 <= self.timing_jitter < 1.0:
            raise ConfigError(f"must lie in [0, 1), got {self.timing_jitter}", "timing_jitter")
        if self.projector_layers < 1 or self.probe_folds < 2:
            raise ConfigError("projector_layers must be >= 1 and probe_folds >= 2", "projector")
        if self.method != "mae" and self.batch_size < 2:
            raise ConfigError(
                f"{self.method} needs batch statistics: batch_size >= 2", "batch_size"
            )


def pretrain_cases(ds: NnUNetDataset, phases: Sequence[str]) -> list[str]:
    """The studies pretraining reads: every case, labeled or not, except (in a dataset whose cases
    may lack phases) those that have none of `phases`."""
    cases = [c.case_id for c in ds.cases]
    if not ds.allow_missing_phases:
        return cases
    return [c for c in cases if set(phases) & set(ds.present_phases(c))]


def crop_size(item: dict[str, Any]) -> tuple[int, ...]:
    """(D, H, W) of a cached study, read from its header."""
    try:
        return tuple(np.load(item["image"], mmap_mode="r", allow_pickle=False).shape[-3:])
    except (OSError, ValueError) as exc:
        raise InputFileError(
            f"cached image unreadable (re-run preprocess): {exc}", item["image"]
        ) from None


def mae_patch(config: PretrainConfig, stride: int, spatial: Sequence[int]) -> tuple[int, int, int]:
    """The MAE patch size: the configured one (a multiple of the encoder stride dividing the crop) or
    the stride itself on every axis."""
    patch = tuple(config.patch_size) or (stride,) * 3
    if any(p % stride for p in patch):
        raise ConfigError(
            f"patch size {list(patch)} must be a multiple of the encoder's stride {stride} on every "
            "axis (a hidden patch must cover whole deepest-map cells)",
            "patch_size",
        )
    try:
        patch_grid(spatial, patch)
    except ValueError as exc:
        raise ConfigError(str(exc), "patch_size") from None
    return patch  # type: ignore[return-value]


def epoch_lr(config: PretrainConfig, epoch: int) -> float:
    """Learning rate of `epoch` (0-based): linear warm-up, then cosine to zero."""
    w = config.warmup_epochs
    if epoch < w:
        return config.lr * (epoch + 1) / (w + 1)
    span = max(config.epochs - w, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / span))


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(history[0]) if history else []
    lines = [",".join(columns)]
    for rec in history:
        lines.append(
            ",".join(f"{rec[c]:.6g}" if isinstance(rec[c], float) else str(rec[c]) for c in columns)
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


class _Probe:
    """The labeled studies, un-augmented, for the per-epoch linear probe."""

    def __init__(self, items: Sequence[dict[str, Any]], config: PretrainConfig, roi: bool):
        labeled = [it for it in items if it.get("label")]
        names = sorted({str(it["label"]) for it in labeled})
        self.labels = [str(it["label"]) for it in labeled]
        self.patients = [str(it.get("patient_id") or it["case_id"]) for it in labeled]
        self.data = CachedStudyDataset(
            labeled, {c: i for i, c in enumerate(names)}, roi_channel=roi
        )
        self.config = config
        self.usable = len(names) >= 2

    def auc(self, net: SSLNet, device: torch.device) -> float:
        feats = encode(net.encoder, self.data, device, self.config.batch_size)
        return probe_auc(
            feats, self.labels, self.patients, self.config.probe_folds, self.config.seed
        )


def pretrain(
    items: Sequence[dict[str, Any]],
    out: str | Path,
    model_factory: Callable[[], MultiPhaseModel],
    config: PretrainConfig,
    meta: dict[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    roi_channel: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> dict[str, Any]:
    """Pretrain the encoder of `model_factory()` on `items` (cached studies, labeled or not) into
    OUT; `meta` (model name, options, phases, preprocessing, ...) goes into the bundle. Returns the
    history, the bundle path and the probe AUC before training."""
    out, cfg, dev = Path(out), config, _device(device)
    if not items:
        raise DatasetError("no studies to pretrain on")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(cfg.seed)
        model = model_factory()
        encoder = model_encoder(model, f"cannot pretrain model {meta.get('model')!r}")
        spatial = crop_size(items[0])
        if any(n % encoder.stride for n in spatial):
            raise ConfigError(
                f"the encoder halves the crop to 1/{encoder.stride}: the crop {list(spatial)} must "
                "divide by it on every axis (preprocess size)",
                "size",
            )
        patch = mae_patch(cfg, encoder.stride, spatial) if cfg.method == "mae" else None
        mask = None
        if patch is not None:
            mask = {
                "grid": patch_grid(spatial, patch),
                "ratio": cfg.mask_ratio,
                "mode": cfg.mask_mode,
            }
        elif len(items) < cfg.batch_size:
            raise ConfigError(
                f"{cfg.method} drops incomplete batches: {len(items)} studies are fewer than the "
                f"batch size {cfg.batch_size}",
                "batch_size",
            )
        data = PretrainDataset(
            items,
            cfg.method,
            cfg.seed,
            cfg.augment_params,
            cfg.crop_scale,
            cfg.timing_jitter,
            mask=mask,
            roi_channel=roi_channel,
        )
        net = SSLNet(
            encoder, cfg.method, len(model.phases), model.in_channels, cfg.to_dict(), patch
        ).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        probe = _Probe(items, cfg, roi_channel)
        settings = {"config": cfg.to_dict(), "meta": {k: meta.get(k) for k in sorted(meta)}}
        loop: dict[str, Any] = {"epoch": 0, "history": [], "probe_auc_init": None}
        saved = load_checkpoint(out / "checkpoint", net, opt) if resume else None
        if saved is not None:
            check_same_settings(saved["settings"]["config"], settings["config"], out / "checkpoint")
            check_same_settings(saved["settings"]["meta"], settings["meta"], out / "checkpoint")
            loop = {k: saved[k] for k in loop}
        elif probe.usable and cfg.probe_every:
            loop["probe_auc_init"] = probe.auc(net, dev)

        def bundle_meta() -> dict[str, Any]:
            last = loop["history"][-1] if loop["history"] else {}
            return {
                **meta,
                "method": cfg.method,
                "epochs": loop["epoch"],
                "seed": cfg.seed,
                "pretraining": cfg.to_dict(),
                "studies": len(items),
                "labeled": len(probe.labels),
                "metrics": nan_to_none(
                    {
                        "loss": last.get("loss", math.nan),
                        "probe_auc": last.get("probe_auc", math.nan),
                        "probe_auc_init": loop["probe_auc_init"],
                    }
                ),
            }

        if loop["epoch"]:  # a kill between checkpoint and bundle leaves the bundle one epoch behind
            save_encoder_bundle(out / "bundle", model, bundle_meta())
        while loop["epoch"] < cfg.epochs:
            epoch = loop["epoch"]
            lr = epoch_lr(cfg, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, terms, seen, seconds = _train_epoch(net, opt, data, cfg, epoch, dev, progress)
            auc = math.nan
            if probe.usable and cfg.probe_every and (epoch + 1) % cfg.probe_every == 0:
                auc = probe.auc(net, dev)
            record = {
                "epoch": epoch + 1,
                "loss": loss,
                **terms,
                "probe_auc": auc,
                "lr": lr,
                "seconds": seconds,
                "samples_per_s": seen / max(seconds, 1e-9),
                "max_rss_mb": _max_rss_mb(),
            }
            loop["history"].append(record)
            loop["epoch"] = epoch + 1
            save_checkpoint(out / "checkpoint", net, opt, {**loop, "settings": settings})
            save_encoder_bundle(out / "bundle", model, bundle_meta())
            _write_log(out / "log.csv", loop["history"])
            for callback in callbacks:
                callback(epoch + 1, record)
        return {
            "history": loop["history"],
            "bundle": str(out / "bundle"),
            "probe_auc_init": loop["probe_auc_init"],
        }
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train_epoch(
    net: SSLNet,
    opt: torch.optim.Optimizer,
    data: PretrainDataset,
    cfg: PretrainConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> tuple[float, dict[str, float], int, float]:
    """One pass over the studies in a (seed, epoch) order; mean loss and terms per study."""
    data.set_epoch(epoch)
    order_seed = int(np.random.SeedSequence([cfg.seed, epoch, 3]).generate_state(1)[0])
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(order_seed)).tolist()
    loader = DataLoader(
        data,
        batch_size=cfg.batch_size,
        sampler=order,
        num_workers=cfg.num_workers,
        drop_last=cfg.method != "mae",
        generator=torch.Generator().manual_seed(order_seed),
    )
    net.train()
    start, total, seen = time.perf_counter(), 0.0, 0
    sums: dict[str, float] = {}
    bar = tqdm(
        loader,
        desc=f"pretrain {epoch + 1}/{cfg.epochs}",
        leave=False,
        disable=not (progress and sys.stderr.isatty()),
    )
    for batch in bar:
        loss, terms = net(batch)
        if not torch.isfinite(loss.detach()):
            raise ConfigError(
                f"pretraining diverged: loss {float(loss.detach())} in epoch {epoch + 1}; "
                "lower the learning rate or set grad_clip",
                "lr",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        n = len(batch["index"])
        total, seen = total + float(loss.detach()) * n, seen + n
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * n
        bar.set_postfix(loss=f"{total / seen:.4f}")
    seen = max(seen, 1)
    return total / seen, {k: v / seen for k, v in sums.items()}, seen, time.perf_counter() - start
