"""The data path: decoding, image folders and their cache, streaming, augmentation, splits, task indices."""
