"""User-facing errors: the CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input or options; the message names the file or option."""
