"""Data collection, datasets, VAE training and the three post-training stages."""
