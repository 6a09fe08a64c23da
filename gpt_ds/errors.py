"""Errors that reach the user as one short message (no traceback): they name the file, key or rank and the fix."""


class GptDsError(Exception):
    """Base for problems the user can fix; the CLI prints the message and exits with status 2.

    `quiet`: another rank reports this same problem (see gpt_ds.dist.agree), so this process exits 2 without
    printing it again: a job log gets each error once, not once per rank."""

    def __init__(self, message: str = "", *, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet
