"""Benchmarks measured in one run: model profiles (models.py); the lead grows it for `bench`."""
