"""Synthetic cohorts: analytic anatomy (anatomy.py), contrast kinetics (kinetics.py), CT studies and
cohorts (ct.py) and DICOM export (writers.py)."""
