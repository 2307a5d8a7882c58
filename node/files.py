"""Writing a file so that readers see the old bytes or the new, never half of them.

The bytes go to a temporary file beside the target (``mkstemp``: owner-only, mode
0600), are flushed to disk, and the file is renamed over the target; on any failure
the temporary file is removed. Used for fetched patterns and team share files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, owner-only; OSError says what failed."""
    directory = path.parent if str(path.parent) else Path(".")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
