"""`liverphase models` reads a shipped static catalogue: it matches the registry and needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from _cli_support import RUNNER, one_line_error
from liverphase.catalogue import (
    REGENERATE,
    format_catalogue,
    read_static_rows,
    static_catalogue,
    static_catalogue_path,
)
from liverphase.cli import app
from liverphase.train.catalogue import model_catalogue, static_rows, write_static_catalogue


def test_static_catalogue_matches_the_registry():
    stored, live = read_static_rows(), static_rows()
    assert [r["model"] for r in stored] == [r["model"] for r in live], (
        f"{static_catalogue_path()} lists other models than the registry; run: {REGENERATE}"
    )
    for s, lv in zip(stored, live, strict=True):
        assert s == lv, f"{s['model']} changed since {static_catalogue_path()}; run: {REGENERATE}"
    # the table from the file is the one built live (options' tuples read back as tuples)
    assert format_catalogue(static_catalogue()) == format_catalogue(model_catalogue())
    assert [r["options"] for r in static_catalogue()] == [r["options"] for r in model_catalogue()]


def test_write_static_catalogue_round_trips(tmp_path):
    path = write_static_catalogue(tmp_path / "catalogue.json")
    assert json.loads(path.read_text(encoding="utf-8")) == read_static_rows()


def test_models_command_imports_no_torch():
    # a fresh interpreter: this test process has torch loaded already
    code = textwrap.dedent(
        """
        import sys
        from typer.testing import CliRunner
        from liverphase.cli import app
        for args in (["models"], ["models", "--options"], ["models", "--names", "std_net"]):
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
            assert "| std_net |" in res.output, res.output
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))
        assert not loaded, loaded[:5]
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_models_marks_the_default_recipe_and_lists_options():
    res = RUNNER.invoke(app, ["models", "--names", "unet_channels,early_fusion", "--options"])
    assert res.exit_code == 0, res.output
    rows = {ln.split("|")[1].strip(): ln for ln in res.output.splitlines() if ln.startswith("|")}
    assert set(rows) == {"model", "---", "unet_channels", "early_fusion"}
    assert "default, region-radial*" in rows["unet_channels"]
    assert "| default* |" in rows["early_fusion"]
    assert "early_fusion: in_channels=3, stem_stride=2, widths=(32, 64, 128, 256)" in res.output


def test_models_live_gives_the_same_table():
    static = RUNNER.invoke(app, ["models", "--options"])
    live = RUNNER.invoke(app, ["models", "--options", "--live"])
    assert static.exit_code == live.exit_code == 0, static.output + live.output
    assert static.output == live.output


def test_unknown_model_name_is_one_line():
    one_line_error(["models", "--names", "std_net,nope"], "unknown model(s) ['nope']", "std_net")
