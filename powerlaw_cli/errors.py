"""The project's error type: bad input from a user (a setting, a file, a table, a cluster that refuses),
reported by the CLI as one line and exit status 2. Each module raises its own subclass; this module
imports nothing, so the CLI can catch them all without importing torch, pandas or scipy."""


class PlsweepError(ValueError):
    """An error the user can fix; its message is one line naming the input (file, setting, option)."""
