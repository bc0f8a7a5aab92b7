"""Datasets: sources (synthetic, published layouts, user CSV) -> one common manifest."""
