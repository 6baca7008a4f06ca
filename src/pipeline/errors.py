"""The base of every error a user can fix; stages print it as one line and exit non-zero."""


class PipelineError(Exception):
    """Bad params, bad input files or a failed gate: the message says what and where."""
