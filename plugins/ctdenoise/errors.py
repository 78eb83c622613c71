"""Expected failures: the CLI prints their message on one line, without a traceback."""


class CtDenoiseError(Exception):
    """An input or parameter problem the user can fix; the message names the file and the reason."""


class InputError(CtDenoiseError):
    """A file or series cannot be used (not DICOM, truncated, undecodable, inconsistent...)."""


class ParameterError(CtDenoiseError):
    """A command-line or DAG parameter is out of range."""
