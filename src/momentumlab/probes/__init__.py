"""Measurements taken during and after training."""
