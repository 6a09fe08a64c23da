"""Errors that reach the user as one short message (no traceback): they name the file, key or rank and the fix."""


class GptDsError(Exception):
    """Base for problems the user can fix; the CLI prints the message and exits with status 2."""
