"""Errors that reach the user as one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong path, an unknown name, an impossible setting.

    The CLI prints the message as one line and exits with code 2; ``--debug`` shows the traceback.
    The message says what is wrong and what to do.
    """
