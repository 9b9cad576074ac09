"""Publishing a generated dataset folder atomically, or reusing the one already there.

The folder is written under a temporary name next to ``root`` and renamed into place, with
its marker file (``root/.complete``: what was generated, as JSON) written last, so an
interrupted run never leaves a folder that looks complete. Several processes may publish the
same dataset at once (DDP ranks): the first rename wins and the others reuse its folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

MARKER = ".complete"


def is_complete(root: Path, marker: dict) -> bool:
    """True if root holds this exact dataset; False if root is absent or an empty folder.

    Raises FileExistsError if root holds anything else.
    """
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        found = None
    if found == marker:
        return True
    raise FileExistsError(
        f"{root} exists but does not hold the synthetic dataset asked for "
        f"(marker {root / MARKER}: found {found}, wanted {marker}); "
        f"delete {root} or pick another root."
    )


def publish(root: Path, marker: dict, write: Callable[[Path], None]) -> Path:
    """Have ``write`` fill a temporary folder, add ``marker`` and rename the folder to
    ``root``; returns ``root``.

    ``root`` must be absent or an empty folder (see ``is_complete``). If another process
    publishes first, its folder is kept when it holds the same ``marker`` (FileExistsError
    otherwise). The temporary folder is removed whatever happens.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, sort_keys=True))
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        try:
            tmp.rename(root)
        except OSError:  # another process published first
            if not is_complete(root, marker):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
