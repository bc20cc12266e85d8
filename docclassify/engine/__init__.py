"""Training engine: setup, optimisation, the per-fold fit loop and K-fold orchestration."""
