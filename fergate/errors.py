"""User-facing errors: the CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input or options; the message names the file or option."""


class Interrupted(Exception):
    """A run stopped by a signal after saving where it was; the CLI exits with 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class DiskFull(UserError):
    """A write that failed for space: the message names the path, the space needed when
    known, and what was kept (the same command resumes from it once space is freed)."""
