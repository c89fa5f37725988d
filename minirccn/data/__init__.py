"""Datasets, loaders and transforms."""
