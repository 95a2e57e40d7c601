"""The one exception type a user is meant to see."""


class TalkgsError(Exception):
    """An error the user can act on.

    The CLI prints its message as a single line and exits with status 2; it never shows a traceback
    for it. Raise it for bad input (a missing file, a video with no face, a folder that exists),
    never for a bug.
    """
