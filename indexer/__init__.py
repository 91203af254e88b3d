"""The indexer: settings, image decoding, the model, and the indexing pipeline."""
