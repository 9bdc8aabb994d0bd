"""The `liverphase` command line: one thin function per command; user errors exit 2 with one line.

`common` holds the app, the error decorator and the shared options; each `*_commands` module
registers its group of commands on import.
"""

from liverphase.cli import data_commands, run_commands, train_commands  # noqa: F401  (registers)
from liverphase.cli.common import app, main

__all__ = ["app", "main"]
