"""`python -m momentumlab` is the `momentumlab` command."""

from momentumlab.cli import main

main()
