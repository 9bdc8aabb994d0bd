"""What the CLI tests share: running a command, and the one-line user error every command gives."""

from __future__ import annotations

from typer.testing import CliRunner

from liverphase.cli import app

RUNNER = CliRunner()


def one_line_error(args: list[object], *expected: str) -> str:
    """Run the CLI; it must exit 2 with a single `error:` line holding every `expected`, no traceback."""
    result = RUNNER.invoke(app, [str(a) for a in args])
    out = result.output
    assert result.exit_code == 2, f"{args}: exit {result.exit_code}\n{out}\n{result.exception!r}"
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]
