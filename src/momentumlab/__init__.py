"""momentumlab: reproduce and measure what momentum changes in what a network learns."""

__version__ = "0.1.0"
