"""`python -m momentumlab` is the `momentumlab` command."""

from momentumlab.cli import app

app(prog_name="momentumlab")
