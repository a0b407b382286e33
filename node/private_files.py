"""Files and directories only their owner may read: cluster files, tokens, keys and data (secrets at rest)."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path``, readable and writable by its owner only (0600).

    Text is ended with a newline. A file that existed with a wider mode is narrowed first.
    """
    data = text if isinstance(text, bytes) else (text if text.endswith("\n") else text + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Make directory ``path`` (and missing parents) if needed, and leave it open to its owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
