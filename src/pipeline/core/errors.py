"""The base of every error a user can fix; stages print it as one line and exit non-zero."""

import reprlib

MAX_SHOWN = 80  # characters of a bad value quoted in an error


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() itself refuses an int of over 4,300 digits (a ValueError inside the error path)
        if x.bit_length() > 1_000:
            return f"<an integer of {x.bit_length():,} bits>"
        return super().repr_int(x, level)


def _short_repr() -> reprlib.Repr:
    shown = _ShortRepr()  # a megabyte value must not become a megabyte-long line
    shown.maxstring = shown.maxother = MAX_SHOWN
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = 8
    shown.maxlevel = 3
    return shown


_SHORT = _short_repr()


def short_repr(value: object) -> str:
    """``repr(value)`` for an error message: strings cut in the middle, containers after 8
    items and 3 levels, huge integers by their size; newlines escaped, as repr does."""
    return _SHORT.repr(value)


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
