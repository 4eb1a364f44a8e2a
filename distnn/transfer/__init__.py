"""Transfer learning and baselines on a trained model's features or on raw data."""
