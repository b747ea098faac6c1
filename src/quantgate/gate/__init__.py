"""Figures against baselines: the stored baselines, their noise model, verdicts, and calibration."""
