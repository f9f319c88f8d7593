"""The one error type users see: the CLI prints its message and exits with status 2, no traceback."""

import reprlib


class NanolabError(Exception):
    """A problem with the user's input (spec, sweep file, run folder, data) stated in one line."""


class SpecError(NanolabError, ValueError):
    """A spec value that is not accepted: names the file, the dotted key, the value and what is accepted."""


SHOWN = reprlib.Repr()  # Python 3.11's Repr takes no arguments
SHOWN.maxlevel, SHOWN.maxstring, SHOWN.maxlong, SHOWN.maxother = 2, 100, 40, 100
SHOWN.maxtuple = SHOWN.maxlist = SHOWN.maxdict = SHOWN.maxset = 4
SHOWN_MAX = 200  # characters of a value in a message, at most (reprlib bounds each part, not the whole)


def shown(value: object) -> str:
    """`repr(value)` cut to at most SHOWN_MAX characters, for messages: a YAML alias tree of 9**9 strings
    (its file is a few lines) or a megabyte string is a value to name, not to print whole."""
    text = SHOWN.repr(value)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."
