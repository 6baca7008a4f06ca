"""Opening a file a stage reads but did not write: only a regular file, never a hang.

Standard library only: image-decoding workers import this without torch.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO


class NotRegularFileError(OSError):
    """A path to read that is a folder, pipe, device or socket, not a file."""


class LinkRefusedError(OSError):
    """A symbolic link where ``follow_links=False`` wants the file itself."""


def open_regular(path: str | Path, *, follow_links: bool = True) -> IO[bytes]:
    """``path`` opened for binary reading, only if it is a regular file.

    O_NONBLOCK because opening a named pipe for reading waits for a writer: a pipe where a file
    belongs would hang the stage instead of failing. Without ``follow_links`` a symbolic link
    raises LinkRefusedError (O_NOFOLLOW) before anything is read through it.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_links:
            raise LinkRefusedError(errno.ELOOP, "a symbolic link", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(
                errno.EINVAL, "not a regular file (a folder, pipe, device or socket)", str(path)
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
