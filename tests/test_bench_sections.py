"""`liverphase bench --sections`: a partial run measures only what it names and judges only those
targets; the sections it skipped say so in bench.md."""

from __future__ import annotations

import json

import pytest

from liverphase.bench.run import run_bench
from liverphase.errors import ConfigError


def test_accuracy_section_alone_judges_its_own_target_only(tmp_path):
    data = run_bench(tmp_path / "b", quick=True, log=lambda _: None, only=["accuracy"])
    assert data["sections"] == ["accuracy"]
    assert set(data["section_seconds"]) == {"accuracy"}
    assert "models" not in data and "pipeline" not in data
    assert [t["section"] for t in data["targets"]] == ["accuracy"]
    row = data["accuracy"]["rows"][0]
    assert data["targets"][0]["value"] == row["auc"] and data["targets"][0]["met"] == row["learns"]
    md = (tmp_path / "b" / "bench.md").read_text()
    assert md.count("Not run.") == 4  # ceiling, models, pipeline, dataload
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["targets"] == data["targets"]


def test_unknown_section_fails_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['speed'\]"):
        run_bench(tmp_path / "b", quick=True, only=["accuracy", "speed"])
    assert not (tmp_path / "b").exists()
