"""Paths built from names that come from data, configs or files on disk.

:func:`safe_join` is the one way dpokit turns such a name into a path under a directory it writes
to (a run directory, a cache directory) or reads from (a checkpoint): the result is guaranteed to
lie inside ``base``, so a name such as ``../../.bashrc``, an absolute path, or a symbolic link
inside ``base`` that points elsewhere cannot send a write outside it.
"""

from __future__ import annotations

import os
import re
from typing import Union

from .errors import UnsafePathError  # noqa: F401  (re-exported)

PathLike = Union[str, "os.PathLike[str]"]

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=@-]+")




def safe_join(base: PathLike, *parts: PathLike) -> str:
    """``os.path.join(base, *parts)``, refused (:class:`UnsafePathError`) unless it stays inside
    ``base`` once ``..``, absolute parts and symbolic links are resolved.

    Empty parts, NUL bytes, absolute parts and parts that climb out (``..``) are refused; nested
    relative parts (``"a/b"``) are allowed as long as the result stays inside ``base``.
    """
    base = os.fspath(base)
    if not base:
        raise UnsafePathError("empty base directory")
    pieces = []
    for part in parts:
        part = os.fspath(part)
        if not isinstance(part, str) or not part or "\x00" in part:
            raise UnsafePathError(f"invalid path component {part!r}")
        if os.path.isabs(part) or (os.path.splitdrive(part)[0]):
            raise UnsafePathError(f"absolute path component {part!r} under {base!r}")
        pieces.append(part)
    joined = os.path.join(base, *pieces)
    root = os.path.realpath(base)
    target = os.path.realpath(joined)
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(f"{os.path.join(*pieces) if pieces else ''!r} would leave {base!r}")
    return joined


def safe_name(text: str, max_length: int = 80, default: str = "item") -> str:
    """A file name made from arbitrary text: only ``[A-Za-z0-9._+=@-]``, no leading dot, bounded
    length. Use for names derived from data or config values (a dataset id, a loss name)."""
    name = _UNSAFE_CHARS.sub("_", str(text)).strip("._") or default
    return name[:max_length]
