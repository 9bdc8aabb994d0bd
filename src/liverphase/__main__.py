"""`python -m liverphase` (and so `torchrun --nproc_per_node=N -m liverphase train ...`): the CLI."""

from liverphase.cli import main

main()
