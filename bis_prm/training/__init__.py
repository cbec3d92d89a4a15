"""Training: `PRMConfig` and `PRMTrainer` (TRL-style), and `script`, the run behind `bis-prm train` and
`recipes/train.py`."""
