"""`liverphase bench`: speed, memory and accuracy measured side by side in one run (run.py).

models.py profiles the registered models, ceiling.py the machine and its matmul ceiling,
pipeline.py predict and preprocessing on realistic studies, dataload.py the data wait of a
training step, accuracy.py a small fixed cross-validation; report.py judges the targets and
writes bench.md.
"""
