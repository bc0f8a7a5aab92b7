"""The one exception type the CLI turns into a one-line error message and exit code 2."""


class FairDiffError(Exception):
    """Bad input or a failed check: the message names the file or config key and what was expected."""
