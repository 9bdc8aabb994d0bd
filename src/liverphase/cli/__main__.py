"""`python -m liverphase.cli`: the same as the `liverphase` command."""

from liverphase.cli import main

main()
