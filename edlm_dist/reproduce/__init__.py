"""The small-scale reproduction of the paper's claims behind `tools/reproduce.py`: settings,
stages (train, evaluate, sample, score), the figures read back, plots and `results.md`."""
