"""Command-line option parsing that lives outside the CLI: experiment kwargs, boxes, run labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liverphase.errors import ConfigError
from liverphase.evaluate.compare import label_runs
from liverphase.inference.run import parse_bbox
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train.options import experiment_kwargs, parse_model_options


def test_model_options_are_yaml_scalars() -> None:
    assert parse_model_options(["miff=false", "mtl_lambda=0.25", "dims=[1, 2]", "name=a=b"]) == {
        "miff": False,
        "mtl_lambda": 0.25,
        "dims": [1, 2],
        "name": "a=b",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_model_options(["miff"])


def test_flags_win_over_the_yaml_config(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "train: {epochs: 30, lr: 0.01}\npreprocess: {margin_mm: 5}\n"
        "model_options: {miff: false, spm: true}\n"
    )
    kw = experiment_kwargs(  # the plain profile: this is about the YAML and the flags
        "miff_spm",
        "cpu",
        cfg,
        epochs=4,
        phases="NC, ART",
        option=["spm=false"],
        no_register=True,
        recipe="default",
    )
    assert kw["epochs"] == 4 and kw["lr"] == 0.01
    assert kw["phases"] == ["NC", "ART"]
    assert kw["model_options"] == {"miff": False, "spm": False}
    assert kw["preprocess_overrides"] == {"margin_mm": 5, "register": False}
    assert experiment_kwargs("std_net", "paper")["phases"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [("train: [1\n", "invalid YAML"), ("optimizer: {}\n", "sections"), ("- 1\n", "sections")],
)
def test_bad_configs_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        experiment_kwargs("miff_spm", "cpu", cfg)
    assert "bad.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        experiment_kwargs("miff_spm", "cpu", tmp_path / "missing.yaml")


def test_bbox_text_and_units() -> None:
    assert parse_bbox("1, 2 3 4,5,6") == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert parse_bbox(None, "voxel") is None
    with pytest.raises(ConfigError, match="--bbox"):
        parse_bbox("1 2 x")
    with pytest.raises(ConfigError, match="mm or voxel"):
        parse_bbox("1 2 3", "cm")


def test_runs_are_labelled_by_model_and_options_then_folder(tmp_path: Path) -> None:
    runs = []
    runs_given = (
        ("a", "std_net", {"in_channels": 3}),
        ("b", "unet_channels", {}),
        ("c", "std_net", {"in_channels": 3}),
        ("d", "std_net", {"in_channels": 3, "temporal": "concat", "region_kinetics": True}),
    )
    for name, model, options in runs_given:
        (tmp_path / name).mkdir()
        info = {"model": model, "model_options": options}
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        runs.append(tmp_path / name)
    assert list(label_runs(runs)) == [
        "std_net",
        "unet_channels",
        "std_net [c]",
        "std_net (temporal=concat, region_kinetics=true)",
    ]
    with pytest.raises(ConfigError):
        label_runs([])


def test_runs_name_the_preprocessing_settings_they_change(tmp_path: Path) -> None:
    runs = []
    for name, phases in (("four", None), ("art_pv", ["ART", "PV"]), ("again", None)):
        (tmp_path / name).mkdir()
        info = {"model": "std_net", "model_options": {}, "preprocessing": {"phases": phases}}
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        runs.append(tmp_path / name)
    assert list(label_runs(runs)) == ["std_net", "std_net (phases=ART+PV)", "std_net [again]"]
    # with a subset first, the full run is the one that differs
    assert list(label_runs(runs[1::-1])) == ["std_net", "std_net (phases=all)"]
    # other preprocessing a study varies; a run.json from before a setting existed reads its default
    (tmp_path / "liver").mkdir()
    pre = {"phases": None, "intensity_reference": "liver", "register": False, "margin_mm": 3.0}
    info = {"model": "std_net", "model_options": {}, "preprocessing": pre}
    (tmp_path / "liver" / "run.json").write_text(json.dumps(info))
    assert list(label_runs([tmp_path / "liver", runs[0]])) == [
        "std_net",
        "std_net (register=true, intensity_reference=absolute)",
    ]
    # a finer crop grid, given in a config's preprocess section, is named too
    (tmp_path / "fine").mkdir()
    info = {"model": "std_net", "model_options": {}, "preprocessing": {"size": [32, 48, 48]}}
    (tmp_path / "fine" / "run.json").write_text(json.dumps(info))
    default_grid = "x".join(str(n) for n in PreprocessConfig().size)
    assert list(label_runs([tmp_path / "fine", runs[0]])) == [
        "std_net",
        f"std_net (size={default_grid})",
    ]


def test_cli_rejects_unknown_models_and_bad_boxes_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from liverphase.cli import app

    result = CliRunner().invoke(app, ["models", "--names", "resnet3d18,nope"])
    assert result.exit_code == 2 and "nope" in result.output
    bad_box = ["predict", str(tmp_path), "--bundle", str(tmp_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*bad_box, "--bbox", "1 2 x"])
    assert result.exit_code == 2 and "--bbox" in result.output
    assert len(result.output.strip().splitlines()) == 1
