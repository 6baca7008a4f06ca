"""The base of every error a user can fix; stages print it as one line and exit non-zero."""


class PipelineError(Exception):
    """Bad params, bad input files or a failed gate: the message says what and where."""


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's message, stripped, for a one-line report.

    An exception whose message is blank gives its type name, so the report never reads "()";
    a blank string (a message recorded elsewhere) gives "".
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return "" if isinstance(error, str) else type(error).__name__


def message_lines(error: BaseException) -> list[str]:
    """Every non-blank line of an error's message, stripped; its type name when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines or [type(error).__name__]


def describe(error: BaseException) -> str:
    """``"TypeName: first line"``, or just the type name when the message is blank."""
    name = type(error).__name__
    return f"{name}: {first_line(error)}" if str(error).strip() else name
