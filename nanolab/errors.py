"""The one error type users see: the CLI prints its message and exits with status 2, no traceback."""


class NanolabError(Exception):
    """A problem with the user's input (spec, sweep file, run folder, data) stated in one line."""


class SpecError(NanolabError, ValueError):
    """A spec value that is not accepted: names the file, the dotted key, the value and what is accepted."""
