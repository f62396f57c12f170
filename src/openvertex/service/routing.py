"""Model string → backend, by the configured table of glob patterns (first match wins)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from openvertex.backends.base import Backend
from openvertex.errors import NotFoundError
from openvertex.settings import ModelRoute
from openvertex.translate.resources import ModelName


@dataclass(slots=True)
class Router:
    backends: Mapping[str, Backend]
    routes: Sequence[ModelRoute]

    def replace_routes(self, routes: Sequence[ModelRoute]) -> None:
        """The routing table from now on (a configuration reload): it may name only the backends
        this process started with (new backends take a restart)."""
        unknown = sorted({route.backend for route in routes} - set(self.backends))
        if unknown:
            raise ValueError(f"routes name backends this process did not start: {', '.join(unknown)}")
        self.routes = list(routes)

    def name_of(self, backend: Backend) -> str:
        return next((name for name, known in self.backends.items() if known is backend), "?")

    def find(self, model: str) -> Backend | None:
        for route in self.routes:
            if fnmatchcase(model, route.model):
                return self.backends[route.backend]
        return None

    def find_model(self, model: ModelName) -> Backend | None:
        """The backend of a native model name: by `publisher/M`, else by `M`."""
        return next(filter(None, map(self.find, model.route_ids())), None)

    def routed_id(self, model: ModelName) -> str:
        """The id a native model name is routed by (`publisher/M` when a route matches it, else
        `M`): what a key's model allowlist and the request's record name."""
        return next((name for name in model.route_ids() if self.find(name) is not None), model.routed)

    def resolve(self, model: str) -> Backend:
        backend = self.find(model)
        if backend is not None:
            return backend
        raise NotFoundError(f"Model `{model}` not found. Configured models: {', '.join(self.model_ids())}.")

    def model_ids(self) -> list[str]:
        return [route.model for route in self.routes]

    def models(self) -> list[tuple[str, Backend]]:
        """Each configured model id (a route's pattern) with the backend that serves it."""
        return [(route.model, self.backends[route.backend]) for route in self.routes]

    def ready(self) -> bool:
        return all(backend.ready() for backend in self.backends.values())
