"""The app module: the models and endpoints every docraft process shares."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import NotFound
from models.model import Model
from query.endpoints import Endpoint


@dataclass(frozen=True)
class App:
    """Models by name and endpoints by name, as found in one module."""

    module: str
    models: dict[str, type[Model]]
    endpoints: dict[str, Endpoint]
    sample_data: dict[str, Path] = field(default_factory=dict)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name``; raises ``NotFound`` listing the known ones."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            known = ", ".join(sorted(self.endpoints))
            raise NotFound(f"no endpoint {name!r} (this app has: {known})", endpoint=name)
        return endpoint

    def model(self, name: str) -> type[Model]:
        """The model called ``name``; raises ``NotFound``."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"no model {name!r} (this app has: {', '.join(sorted(self.models))})", model=name)
        return model


def load_app(module_name: str) -> App:
    """Import ``module_name`` and collect the models and endpoints it defines.

    A module may name sample CSV files as ``SAMPLE_DATA = {"Model": "file.csv"}``,
    relative to the module's file; ``docraft up`` loads them into a new cluster.

    Raises ``ImportError`` if it cannot be imported and ``ValueError`` if it
    declares no endpoint.
    """
    module = importlib.import_module(module_name)
    models: dict[str, type[Model]] = {}
    endpoints: dict[str, Endpoint] = {}
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Model) and value is not Model:
            models[value.name] = value
        elif isinstance(value, Endpoint):
            endpoints[value.name] = value
    if not endpoints:
        raise ValueError(f"app module {module_name!r} declares no @query or @mutation endpoint")
    base = Path(module.__file__ or ".").parent
    samples = {name: base / file for name, file in getattr(module, "SAMPLE_DATA", {}).items()}
    return App(module_name, models, endpoints, samples)
