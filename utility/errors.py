"""Errors that end a run with a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (data, flags, paths). ``main.py`` prints it and exits with 2."""

    exit_code = 2


class DataError(UserError):
    """A dataset file is missing or malformed. The message names the file and the problem."""


def file_error(path, problem):
    """A :class:`DataError` whose message starts with the offending path."""
    return DataError(f"{path}: {problem}")
