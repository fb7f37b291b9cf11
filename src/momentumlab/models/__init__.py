"""Models and their objectives."""
