"""docclassify: Hydra-composed document-image classification experiments.

``from docclassify import Predictor`` (docclassify/deploy/predictor.py) is imported on first use, so
``import docclassify`` stays light and a torch-free install can use ``Predictor.from_bundle``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Predictions", "Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "Predictions"):
        from docclassify.deploy import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
