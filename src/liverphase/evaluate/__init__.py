"""Evaluation: metrics, patient-bootstrap CIs, DeLong's test, figures and reports."""
