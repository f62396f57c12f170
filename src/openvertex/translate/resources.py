"""Resource names of the native surfaces: what a URL path names, and which model a name means.

Vertex names models `projects/P/locations/L/publishers/google/models/M` (or, in express mode,
`publishers/google/models/M`) and endpoints `…/endpoints/E`; the Gemini API names them
`models/M`. Inside, a model is routed by `publisher/M` (`google/gemini-2.5-flash`), as the
OpenAI-compatible surface names it, or by the bare id where only that has a route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from openvertex.protocol.generate_content import Dialect

VERSIONS = frozenset({"v1", "v1beta", "v1beta1", "v1alpha"})
_ID = r"[^/:]+"
_PARENT = rf"projects/{_ID}/locations/{_ID}"
_VERTEX_MODEL = re.compile(rf"(?:(?P<parent>{_PARENT})/)?publishers/(?P<publisher>{_ID})/models/(?P<model>{_ID})")
_ENDPOINT = re.compile(rf"(?:(?P<parent>{_PARENT})/)?endpoints/(?P<endpoint>{_ID})")
_GEMINI_MODEL = re.compile(rf"(?:models|tunedModels)/(?P<model>{_ID})")
MODEL_METHODS = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "computeTokens",
        "embedContent",
        "batchEmbedContents",
        "predict",
    }
)


@dataclass(frozen=True, slots=True)
class ModelName:
    """A model as a native request names it."""

    resource: str  # as written: publishers/google/models/M, models/M, projects/…/endpoints/E
    publisher: str | None  # None for an endpoint, whose id is routed as it is
    model: str  # the model id (M), or the endpoint id

    def route_ids(self) -> tuple[str, ...]:
        """The ids to route by, most specific first."""
        return (f"{self.publisher}/{self.model}", self.model) if self.publisher else (self.model,)

    @property
    def routed(self) -> str:
        return self.route_ids()[0]


def parse_model_name(name: str) -> ModelName | None:
    """A model's resource name (either dialect), or None when it is not one."""
    if match := _VERTEX_MODEL.fullmatch(name):
        return ModelName(name, match["publisher"], match["model"])
    if match := _ENDPOINT.fullmatch(name):
        return ModelName(name, None, match["endpoint"])
    if match := _GEMINI_MODEL.fullmatch(name):
        return ModelName(name, "google", match["model"])
    return None


def model_name_from_id(model: str) -> ModelName:
    """An OpenAI-surface model string (`google/gemini-2.5-flash`, `smollm2`) as a model name."""
    publisher, _, bare = model.rpartition("/")
    return ModelName(model, publisher or None, bare or model)


def split_version(path: str) -> tuple[str | None, str]:
    """`/v1beta1/projects/…` → ("v1beta1", "projects/…"); the collection-scope form has no version."""
    first, _, rest = path.lstrip("/").partition("/")
    return (first, rest) if first in VERSIONS else (None, path.lstrip("/"))


def dialect_of(version: str | None, name: str) -> Dialect:
    """Vertex's names start with projects/, publishers/ or endpoints/ (or sit on v1beta1, Vertex's
    version, or on no version at all); the rest are the Gemini API's."""
    if name.startswith(("projects/", "publishers/", "endpoints/")) or version in (None, "v1beta1"):
        return "vertex"
    return "gemini"


# What the SDKs write for the project and location they do not have in Vertex express mode (an API
# key, no project): google-genai for Python `None`, for JavaScript `undefined`.
_UNSET_PARENT = re.compile(r"projects/(?:None|undefined|null)/locations/(?:None|undefined|null)/")


def without_unset_parent(name: str) -> str:
    """A resource name an SDK wrote in express mode (`projects/None/locations/None/cachedContents/X`)
    as the express resource it names (`cachedContents/X`); any other name as it is."""
    match = _UNSET_PARENT.match(name)
    return name[match.end() :] if match else name


def parent_of(name: str) -> str:
    """`projects/P/locations/L` of a Vertex resource name, or "" for one without."""
    match = re.match(_PARENT, name)
    return match.group(0) if match else ""
