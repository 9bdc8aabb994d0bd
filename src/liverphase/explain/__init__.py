"""Explanations: Grad-CAM per phase, phase occlusion, enhancement kinetics."""
