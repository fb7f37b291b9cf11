"""Data distributions."""
