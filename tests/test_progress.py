"""The per-fold progress line: what it says, and how often it speaks without a terminal."""

from __future__ import annotations

import io
import math

from liverphase.train import progress as progress_module
from liverphase.train.progress import FoldProgress


def _record(loss: float, auc: float = math.nan, dice: float | None = None) -> dict:
    rec = {"train_loss": loss, "val_auc": auc}
    if dice is not None:
        rec["val_dice"] = dice
    return rec


def test_line_names_fold_epoch_scores_and_time_left(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    p = FoldProgress("fold 2/3", epochs=12, stream=io.StringIO())
    now[0] = 120.0  # 2 epochs took 120 s
    text = p.line(2, _record(0.4123, 0.8312, 0.7901))
    assert text == (
        "fold 2/3 epoch 2/12, loss 0.412, val AUC 0.831, Dice 0.790, 1:00 per epoch, "
        "fold ends in 10:00"
    )
    assert "val AUC" not in FoldProgress("f", 3, stream=io.StringIO()).line(1, _record(0.5))


def test_without_a_terminal_it_speaks_every_30_s_and_at_the_fold_end(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    p = FoldProgress("fold 1/3", epochs=5, stream=out)
    for epoch, t in zip(range(1, 6), (10.0, 20.0, 45.0, 50.0, 55.0), strict=True):
        now[0] = t
        p(epoch, _record(1.0 / epoch))
    lines = out.getvalue().splitlines()
    # epoch 1 (first), epoch 3 (35 s after it), epoch 5 (the fold's end); never 30 s of silence
    assert [ln.split(",")[0] for ln in lines] == [
        "fold 1/3 epoch 1/5",
        "fold 1/3 epoch 3/5",
        "fold 1/3 epoch 5/5",
    ]
    assert lines[-1].endswith("done") and "\r" not in out.getvalue()
    silent = io.StringIO()
    FoldProgress("x", 2, enabled=False, stream=silent)(2, _record(0.1))
    assert silent.getvalue() == ""
