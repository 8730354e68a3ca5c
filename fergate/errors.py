"""User-facing errors: the CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input or options; the message names the file or option."""


class Interrupted(Exception):
    """A run stopped by a signal after saving where it was; the CLI exits with 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
