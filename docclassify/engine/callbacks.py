"""The fit loop's hooks, re-exported: their home is tracking/callbacks.py, the layer below engine that
implements them (the import-layer contract in .importlinter)."""

from docclassify.tracking.callbacks import Callback, CallbackList

__all__ = ["Callback", "CallbackList"]
