"""One exception type for every user-facing failure.

The CLI prints ``str(err)`` as a single line and exits non-zero, so messages name the file,
tensor or option at fault and say what is wrong in one sentence.
"""


class EdgeAwqError(Exception):
    """A problem with the user's input or environment, reported as one line."""
