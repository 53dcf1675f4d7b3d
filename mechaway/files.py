"""Reading files that come from outside (flow files, pack manifests, WASM modules)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (blocking).

    Opened non-blocking, so a FIFO by that name cannot hang the reader; a directory,
    device or FIFO is an ``OSError`` (EINVAL), and so is a file larger than ``limit``
    (EFBIG), which is never read past ``limit + 1`` bytes even if it grows meanwhile.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than the limit of {limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"more than the limit of {limit} bytes")
    return data
