"""Run logs written by rank 0: RUN/log.csv (rewritten whole each epoch) and TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_text

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds", "samples_per_s")


OPTIONAL_COLUMNS = ("val_dice",)


def write_log_csv(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Write one row per epoch record (LOG_COLUMNS, then val_dice for segmenting models),
    atomically; a resumed run rewrites it whole."""
    columns = [*LOG_COLUMNS, *(c for c in OPTIONAL_COLUMNS if history and c in history[0])]
    lines = [",".join(columns)]
    lines += [",".join(_fmt(rec[c]) for c in columns) for rec in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def open_tensorboard(folder: str | Path, purge_step: int) -> Any:
    """A SummaryWriter dropping events from `purge_step` on (a resumed run's redone epochs), or
    None when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def write_scalars(writer: Any, record: dict[str, Any]) -> None:
    """One epoch's record as TensorBoard scalars (the keys it has of loss, AUC, Dice, lr, speed)."""
    for key in ("train_loss", "val_loss", "val_auc", "val_dice", "lr", "samples_per_s"):
        if key in record:
            writer.add_scalar(key, record[key], record["epoch"])
    writer.flush()


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
