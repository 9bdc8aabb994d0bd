"""Model profiling: known FLOP and parameter counts, isolated memory, ratios, the markdown table."""

from __future__ import annotations

import pytest

from liverphase.bench.models import (
    REFERENCE_MODEL,
    default_input_shapes,
    format_models_table,
    profile_models,
)


def test_resnet18_counts_match_torchvision():
    rows = profile_models(
        ["resnet2d_avg", "no_such_model"],
        {"imagenet": (1, 3, 1, 224, 224)},
        batch=1,
        repeats=1,
        isolate=False,
    )
    row = next(r for r in rows if r["model"] == "resnet2d_avg")
    # torchvision's resnet18: 1.814 GMACs per 224² image; 11,689,512 parameters of which the
    # 1000-class fc holds 513,000, replaced here by a 2-class head (1,026).
    assert row["fwd_gflops"] == pytest.approx(2 * 1.814, rel=0.01)
    assert 2.5 < row["train_gflops"] / row["fwd_gflops"] < 3.0  # backward ≈ 2× forward
    assert row["params"] == 11_689_512 - 513_000 + 1_026
    assert row["peak_mem_mb"] is None  # only an isolated run measures memory
    ref = next(r for r in rows if r["model"] == REFERENCE_MODEL)  # added to every run
    assert ref["fwd_ratio"] == 1.0 and ref["train_ratio"] == 1.0
    assert row["fwd_ratio"] == pytest.approx(row["fwd_s"] / ref["fwd_s"])
    failed = rows[-1]  # one model failing leaves the others' rows and the table intact
    assert "no_such_model" in failed["error"]
    assert "error" in format_models_table(rows).splitlines()[-1]


def test_isolated_run_measures_memory_and_renders_a_table():
    rows = profile_models(["early_fusion"], {"tiny": (2, 1, 16, 16, 16)}, repeats=2, warmup=1)
    assert [r["model"] for r in rows] == [REFERENCE_MODEL, "early_fusion"]
    small, ref = rows[1], rows[0]
    assert small["input"] == "tiny" and small["shape"] == (2, 1, 16, 16, 16) and small["batch"] == 2
    assert 0 < small["peak_mem_mb"] < small["peak_rss_mb"]
    # resnet3d18 holds 9× the parameters: its gradients alone outweigh the small CNN's step.
    assert ref["peak_mem_mb"] > small["peak_mem_mb"]
    assert small["train_min_s"] <= small["train_s"] <= small["train_max_s"]
    table = format_models_table(rows).splitlines()
    assert table[0].startswith("| model |") and set(table[1]) == {"|", "-"}
    assert len(table) == 2 + len(rows)
    assert table[2].count("|") == table[0].count("|") and "early_fusion" in table[3]


def test_default_inputs():
    assert default_input_shapes()["paper"] == (4, 3, 64, 128, 128)
    assert set(default_input_shapes(quick=True)) == {"quick"}
