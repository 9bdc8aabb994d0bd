"""The lesion locator's settings (the YAML config's `locator:` section), validated without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverphase.config import ConfigBase
from liverphase.errors import ConfigError
from liverphase.preprocess.coarse import CT_WINDOW


@dataclass
class LocatorConfig(ConfigBase):
    """How the locator sees the scan and learns: coarse spacing, patch (canvas) and schedule."""

    # 2 mm: on the development cohort (seed 101, one 40-case test fold) 4 mm found 0.53-0.55 of
    # the lesions, 3 mm 0.53, 2 mm 0.65 (every lesion of 1.9 ml or more)
    spacing_mm: float = 2.0
    ct_window: tuple[float, float] = CT_WINDOW
    canvas: tuple[int, int, int] = (24, 48, 48)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    epochs: int = 40
    # passes over the training cases per epoch (one random patch of each per pass)
    passes: int = 2
    batch_size: int = 4
    lr: float = 3e-3
    threshold: float = 0.5
    val_fraction: float = 0.2
    # share of training patches centred on a lesion voxel (the rest fall anywhere in the scan)
    positive_fraction: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        """Ranges, and a canvas the U-Net's strides divide."""
        checks = {
            "spacing_mm": self.spacing_mm > 0,
            "ct_window": self.ct_window[1] > 0,
            "epochs": self.epochs >= 1,
            "passes": self.passes >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "threshold": 0 < self.threshold < 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "positive_fraction": 0 <= self.positive_fraction <= 1,
            "channels": len(self.channels) >= 2 and min(self.channels) >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"value(s) out of range for {bad}", "locator")
        step = 2 ** (len(self.channels) - 1)
        if any(c % step for c in self.canvas):
            raise ConfigError(
                f"canvas {list(self.canvas)} must be a multiple of {step} on every axis "
                f"(the U-Net halves it {len(self.channels) - 1} times)",
                "locator",
            )


def locator_settings(data: dict[str, Any] | None, path: Path | None) -> LocatorConfig:
    """The `locator:` section of an experiment config (defaults without one); a bad value is a
    ConfigError naming the file and the section."""
    try:
        return LocatorConfig.from_dict(data or {}, source="locator")
    except ConfigError as exc:
        where = f"{exc.path}: " if exc.path and exc.path != "locator" else ""
        raise ConfigError(f"locator: {where}{exc.problem}", path or "locator") from None
