"""Code identity: a fingerprint of the app module a process runs and of docraft itself.

The fingerprint covers the app's source files (every ``.py`` file of its
package, or its single module file), its declared models, and docraft's
version. The cluster records the fingerprint it was created with in the
replicated state; a replica whose own fingerprint differs refuses to apply
commands (see ``consensus.state_machine``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from pathlib import Path

from query.app import App


def docraft_version() -> str:
    try:
        return importlib.metadata.version("docraft")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source_files(module_name: str) -> list[Path]:
    module = importlib.import_module(module_name)
    origin = Path(module.__file__ or "")
    if origin.name == "__init__.py":
        return sorted(p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return [origin]


def app_fingerprint(app: App) -> str:
    """Hex SHA-256 of docraft's version, the app's source files and its model declarations."""
    digest = hashlib.sha256()
    digest.update(f"docraft {docraft_version()}\napp {app.module}\n".encode())
    files = _source_files(app.module)
    root = files[0].parent if files else Path()
    for path in files:
        digest.update(f"file {path.relative_to(root).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    for name, model in sorted(app.models.items()):
        fields = ", ".join(
            f"{f.name}: {f.type.name}={'required' if f.required else repr(f.default)}" for f in model.fields.values()
        )
        declaration = f"model {name} pk={model.primary_key} part={model.partition_key} idx={model.indexes} {fields}"
        digest.update(declaration.encode())
    return digest.hexdigest()
