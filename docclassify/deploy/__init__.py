"""Deployment: export a run to a bundle (export.py, bundle.py), predict with it (predictor.py: the
``Predictor``; numeric.py, runtime.py: torch-free), a folder CLI (cli.py), an HTTP service (serve.py),
and distil an ensemble into one student (distill.py). Importing this package imports nothing heavy."""
