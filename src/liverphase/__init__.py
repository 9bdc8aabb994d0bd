"""liverphase: deep learning on multi-phase liver imaging (multi-phase CT, dynamic and multi-sequence MRI)."""

__version__ = "0.1.0"
