"""docclassify: Hydra-composed document-image classification experiments."""

__version__ = "0.1.0"
