"""User-facing errors: the CLI prints them as one line and exits 2, never with a traceback."""


class CnnpipeError(Exception):
    """A bad input (params key, file, layer, ...): the message names it and says what would be valid."""

    exit_code = 2
