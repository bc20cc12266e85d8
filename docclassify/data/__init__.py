"""Data layer: sources, folds, decoding, caching, augmentation, datasets."""
