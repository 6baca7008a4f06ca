"""One-line messages about ``-S`` values: quoted, newlines escaped and cut short, since a
sweep's values and the libraries' errors that echo them are whatever was typed."""

from __future__ import annotations

from pipeline.core.errors import MAX_SHOWN, PipelineError, first_line, short_repr


class SweepError(PipelineError):
    """A sweep that cannot start: the message names the bad value or the fix."""


def quoted(value: str) -> str:
    """``value`` quoted, its newlines and other control characters escaped, cut short."""
    return short_repr(value)


def shown(value: str) -> str:
    """A ``-S`` value as typed where that is plain text, else quoted."""
    plain = value.isprintable() and len(value) <= MAX_SHOWN and not set(value) & set(" '\"")
    return value if plain else quoted(value)


def reason(error: BaseException) -> str:
    """A library's error in one short line: Hydra and OmegaConf echo the input in theirs."""
    line = first_line(error)
    line = line if line.isprintable() else ascii(line)[1:-1]
    return line if len(line) <= 2 * MAX_SHOWN else f"{line[: 2 * MAX_SHOWN - 3]}..."
