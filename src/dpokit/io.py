"""JSON-lines files, one way everywhere: rows written whole, appended with fsync, read back with one
torn-line rule.

A crash (or a full disk) in the middle of a write can leave the last line of a file incomplete: it
has no trailing newline or does not parse. :func:`read_jsonl` drops such a last line (it was never
finished) and raises :class:`~dpokit.errors.DataError` naming the file and line for a bad line
anywhere else, which no crash of dpokit's writers can produce.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from .errors import DataError

logger = logging.getLogger("dpokit")


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Rows of a JSONL file (``[]`` when it does not exist); blank lines are skipped."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    complete = lines[:-1]  # the text after the last newline is an unfinished line (or empty)
    rows = []
    for number, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if number == len(complete) and not lines[-1].strip():
                logger.warning("%s: line %d is incomplete (an interrupted write); it is ignored", path, number)
                break
            raise DataError(f"{path}:{number}", None, f"not a JSON object ({err})") from None
    if lines[-1].strip():
        logger.warning("%s: the last line has no newline (an interrupted write); it is ignored", path)
    return rows


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
    """Replace ``path`` by ``rows`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def save_safetensors_atomic(tensors: Dict[str, Any], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` to ``path`` as safetensors atomically: a temporary file unique to this process
    (processes may write the same cache at once), then a rename; nothing half-written is left."""
    from safetensors.torch import save_file

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_jsonl(path: str, rows: Sequence[dict]) -> None:
    """Append ``rows`` in one write, flushed and fsynced (so a later crash cannot lose them)."""
    if not rows:
        return
    text = "".join(json.dumps(row) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
