"""`synth --center-frac`: lesion structure other than the phantom's constant, drawn only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.synth.ct import synth_ct_cohort


def _centres(root: Path) -> list[float]:
    cases = json.loads((root / "synth.json").read_text())["cases"]
    return [c["morphology"]["center_frac"] for c in cases]


def test_center_frac_range_is_drawn_and_default_cohorts_keep_theirs(tmp_path: Path) -> None:
    plain = synth_ct_cohort(tmp_path / "plain", cases=4, seed=1, preset="tiny")
    again = synth_ct_cohort(tmp_path / "again", cases=4, seed=1, preset="tiny")
    other = synth_ct_cohort(
        tmp_path / "other", cases=4, seed=1, preset="tiny", center_frac=(0.2, 0.3)
    )
    assert set(_centres(plain)) == {0.45}  # HCC and ICC's own constant
    assert all(0.2 <= v <= 0.3 for v in _centres(other))
    # a cohort is deterministic, and the structure's draw takes nothing from the rest: the same
    # patients, lesions (the same masks) and acquisitions, only the inside of each lesion differs
    assert (plain / "cases.csv").read_bytes() == (again / "cases.csv").read_bytes()
    assert (plain / "cases.csv").read_bytes() == (other / "cases.csv").read_bytes()
    for mask in sorted((plain / "labelsTr").iterdir()):
        assert mask.read_bytes() == (again / "labelsTr" / mask.name).read_bytes()
        assert mask.read_bytes() == (other / "labelsTr" / mask.name).read_bytes()
    images = sorted((plain / "imagesTr").iterdir())
    changed = [f for f in images if f.read_bytes() != (other / "imagesTr" / f.name).read_bytes()]
    assert changed  # the lesions' insides


@pytest.mark.parametrize("value", ["0.2", "0.6 0.3", "x y"])
def test_bad_center_frac_exits_2(tmp_path: Path, value: str) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), "--center-frac", value])
    assert result.exit_code == 2 and "center_frac" in result.output
    assert "Traceback" not in result.output
