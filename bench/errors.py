"""User-facing errors: the CLI prints them on one line and exits with code 2."""


class BenchError(Exception):
    """Bad input from the user (unknown name, malformed file, impossible setting)."""
