"""`ablate --suite ssl`: pretraining × label share on site A's CV and site B, one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.evaluate.ablate_runs import variant_key
from liverphase.evaluate.compare import oof_probs
from liverphase.evaluate.ssl_suite import delong_against, ssl_variants
from liverphase.evaluate.stats import auc_test, auc_test_name
from liverphase.synth.mri_dce import synth_dce_cohort

RUNNER = CliRunner()


def _invoke(args: list) -> tuple[int, str]:
    result = RUNNER.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl_suite")
    site_a = synth_dce_cohort(root / "a", cases=16, seed=3, unlabeled=8, site="A", preset="tiny")
    site_b = synth_dce_cohort(root / "b", cases=8, seed=4, site="B", preset="tiny")
    config = root / "small.yaml"
    config.write_text("preprocess:\n  size: [8, 16, 16]\n  register: false\n")
    args = [
        "ablate", site_a, "--suite", "ssl", "--external", site_b, "--out", root / "run",
        "--folds", 2, "--epochs", 1, "--config", config,
        "-o", "scales=3", "-o", "base_channels=4", "-o", "temporal_scales=1",
        "-s", "epochs=1", "-s", "batch_size=4", "-s", "projector_hidden=32",
        "-s", "projector_out=32", "-s", "probe_folds=2", "-s", "label_fractions=[0.5]",
    ]  # fmt: skip
    code, out = _invoke(args)
    assert code == 0, out
    return {"root": root, "run": root / "run", "a": site_a, "b": site_b, "args": args, "out": out}


def test_one_table_with_every_init_and_label_share(suite: dict[str, Path]) -> None:
    """Rows: none, mae, barlow at each label share, with AUCs on both sites and p against none."""
    result = json.loads((suite["run"] / "ssl.json").read_text())
    rows = {(r["init"], r["fraction"]): r for r in result["rows"]}
    assert set(rows) == {(i, 0.5) for i in ("none", "mae", "barlow")}
    for (init, _), row in rows.items():
        assert 0 <= row["auc_a"] <= 1 and 0 <= row["auc_b"] <= 1
        assert row["auc_a_ci"][0] <= row["auc_a"] <= row["auc_a_ci"][1]
        assert ("p_a" in row) == (init != "none") and ("p_b" in row) == (init != "none")
    # half the labels: about half of each fold's training patients (test folds stay whole)
    splits = json.loads(
        (suite["run"] / "runs" / rows[("none", 0.5)]["run"] / "splits.json").read_text()
    )
    full = np.mean([len(f["train"]) for f in splits.values()])
    assert 0.3 * full <= rows[("none", 0.5)]["n_train"] <= 0.7 * full
    text = (suite["run"] / "report.md").read_text()
    assert "Label efficiency" in text and "Pretraining" in text and "site B" in text
    assert {p["method"] for p in result["pretraining"]} == {"mae", "barlow"}
    assert all(p["peak_mb"] > 0 and p["s_per_epoch"] > 0 for p in result["pretraining"])


def test_fine_tuned_runs_start_from_their_bundle_and_site_b_is_unseen(
    suite: dict[str, Path],
) -> None:
    """Each pretrained row's folds record its method's bundle; pretraining read only site A."""
    result = json.loads((suite["run"] / "ssl.json").read_text())
    for row in result["rows"]:
        meta = json.loads(
            (suite["run"] / "runs" / row["run"] / "fold_0" / "bundle" / "bundle.json").read_text()
        )
        if row["init"] == "none":
            assert not meta.get("init")
        else:
            assert meta["init"]["method"] == row["init"]
        assert meta["training"]["label_fraction"] == row["fraction"]
    for method in ("mae", "barlow"):
        bundle = json.loads(
            (suite["run"] / "pretrain" / method / "bundle" / "bundle.json").read_text()
        )
        assert bundle["studies"] == 24 and bundle["dataset"] == str(suite["a"].resolve())


def test_delong_p_is_the_direct_computation(suite: dict[str, Path]) -> None:
    """The table's site-A p equals DeLong's test on the two runs' out-of-fold probabilities,
    clustered by patient when a patient has several studies, and the report names that test."""
    result = json.loads((suite["run"] / "ssl.json").read_text())
    rows = {(r["init"], r["fraction"]): r for r in result["rows"]}
    run = suite["run"] / "runs" / rows[("mae", 0.5)]["run"]
    ref = suite["run"] / "runs" / rows[("none", 0.5)]["run"]
    ids, probs = oof_probs(run)
    ref_ids, ref_probs = oof_probs(ref)
    order = [ref_ids.index(c) for c in ids]
    with open(run / "predictions.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    y = np.array([r["label"] == "proliferative" for r in table], dtype=int)
    patients = [r["patient_id"] for r in table]
    expected = auc_test(y, probs[:, 1], ref_probs[order, 1], patients)[3]
    assert rows[("mae", 0.5)]["p_a"] == pytest.approx(expected)
    assert delong_against(run, ref, "proliferative") == pytest.approx(expected)
    assert rows[("mae", 0.5)]["p_a_test"] == auc_test_name(patients)
    assert f"site A: {auc_test_name(patients)}" in (suite["run"] / "report.md").read_text()


def test_a_second_sitting_reuses_everything(suite: dict[str, Path]) -> None:
    """Run again on the same OUT: pretraining and every cv run are reused, the table is the same."""
    before = json.loads((suite["run"] / "ssl.json").read_text())["rows"]
    code, out = _invoke(suite["args"])
    assert code == 0, out
    assert out.count("reused") == 2 + 3  # two pretrainings, three cv runs
    after = json.loads((suite["run"] / "ssl.json").read_text())["rows"]
    assert [r["auc_a"] for r in after] == [r["auc_a"] for r in before]


def test_variant_keys_differ_by_init_and_share_but_keep_old_keys() -> None:
    """The ssl rows are distinct runs; a variant without training keys keeps its old key."""
    variants = ssl_variants("std_net", {}, {"mae": Path("/x/mae")}, (0.1, 1.0), 0)
    assert len({variant_key(v) for v in variants.values()}) == 4
    old = {"model": "std_net", "model_options": {}}
    assert json.loads(variant_key(old)) == {
        "model": "std_net", "model_options": {}, "phases": None, "in_channels": None,
        "missing_phase": None,
    }  # fmt: skip


def test_user_errors_are_one_line(suite: dict[str, Path], tmp_path: Path) -> None:
    """No --external, or a site B whose classes differ: exit 2 with one line naming the problem."""
    args = [a for a in suite["args"]]
    i = args.index("--external")
    no_external = args[:i] + args[i + 2 :]
    no_external[no_external.index("--out") + 1] = tmp_path / "r1"
    code, out = _invoke(no_external)
    assert code == 2 and "--external" in out and len(out.strip().splitlines()) == 1
    bad = args.copy()
    bad[bad.index("--out") + 1] = tmp_path / "r2"
    bad[bad.index("label_fractions=[0.5]")] = "label_fractions=[0,1]"
    code, out = _invoke(bad)
    assert code == 2 and "label fractions" in out and len(out.strip().splitlines()) == 1
