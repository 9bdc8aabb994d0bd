"""What a long training run shows the user: one line per fold with its epoch, loss, validation
score and time left, refreshed at least every `EVERY_S` seconds (on a terminal as the bar moves; in a
log file or CI one line per epoch at most that often, and always at the fold's end)."""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

EVERY_S = 30.0


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class FoldProgress:
    """An epoch callback (`Trainer(callbacks=[...])`): 'fold 2/3 epoch 5/12 loss 0.41 val AUC
    0.83 Dice 0.79, 1:20 per epoch, fold ends in 9:20'."""

    def __init__(
        self, label: str, epochs: int, enabled: bool = True, stream: IO[str] | None = None
    ) -> None:
        self.label, self.epochs, self.enabled = label, epochs, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last = -math.inf
        self.lines: list[str] = []

    def line(self, epoch: int, record: dict[str, Any]) -> str:
        """The fold's status after `epoch` (1-based) with this epoch's log record."""
        spent = time.perf_counter() - self.start
        per_epoch = spent / max(epoch, 1)
        parts = [f"{self.label} epoch {epoch}/{self.epochs}", f"loss {record['train_loss']:.3f}"]
        val = [
            f"{name} {record[key]:.3f}"
            for key, name in (("val_auc", "val AUC"), ("val_dice", "Dice"))
            if isinstance(record.get(key), float) and math.isfinite(record[key])
        ]
        left = (self.epochs - epoch) * per_epoch
        tail = "done" if epoch >= self.epochs else f"fold ends in {_fmt_s(left)}"
        return ", ".join([*parts, *val, f"{_fmt_s(per_epoch)} per epoch", tail])

    def __call__(self, epoch: int, record: dict[str, Any]) -> None:
        """Show the line: always on a terminal (in place) and at the fold's end, else when
        `EVERY_S` seconds passed since the last one."""
        if not self.enabled:
            return
        now = time.perf_counter()
        final = epoch >= self.epochs
        if not (self.tty or final or now - self.last >= EVERY_S):
            return
        self.last = now
        text = self.line(epoch, record)
        self.lines.append(text)
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r\033[K" + text + end)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
