"""JSON Schema checks for response_format and tool parameters (spec §2.6, §2.7)."""

from __future__ import annotations

from typing import Any

from openvertex.errors import InvalidArgumentError


def _local_ref_target(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    for token in ref.removeprefix("#").strip("/").split("/"):
        if not token:
            continue
        key = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def check_not_recursive(schema: dict[str, Any], *, param: str) -> None:
    """Reject schemas whose `$ref`s form a cycle: "Fully recursive schemas are not supported"."""
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(ref: str) -> None:
        if ref in done:
            return
        if ref in visiting or ref == "#":
            raise InvalidArgumentError("recursive schemas are not supported", param=param)
        if not ref.startswith("#"):
            raise InvalidArgumentError(f"only local $ref values are supported, got {ref!r}", param=param)
        target = _local_ref_target(schema, ref)
        if target is None:
            raise InvalidArgumentError(f"$ref {ref!r} does not resolve", param=param)
        visiting.add(ref)
        for inner in _refs(target):
            visit(inner)
        visiting.discard(ref)
        done.add(ref)

    for ref in _refs(schema):
        visit(ref)
