"""One exception type for every user-facing mistake (bad data, bad config, unknown names).

The run script and the command-line modules catch it and print its message as one line, so a
user sees the problem and the fix instead of a traceback from deep inside RecBole.
"""


class EtegrecError(Exception):
    """A problem the user can fix; the message names the file/key and the fix."""
