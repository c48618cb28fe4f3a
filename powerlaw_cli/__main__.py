"""``python -m powerlaw_cli`` is ``plsweep``."""

from .cli import app

app(prog_name="plsweep")
