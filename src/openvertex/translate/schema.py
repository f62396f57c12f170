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
    """Reject schemas whose `$ref`s form a cycle: "Fully recursive schemas are not supported".

    A depth-first walk over the refs with an explicit stack: a chain of thousands of `$defs`
    is legitimate, and must not exhaust Python's recursion limit."""
    done: set[str] = set()
    for root in _refs(schema):
        path: list[str] = []  # the refs being visited, each with the refs still to visit under it
        pending: list[list[str]] = []
        ref: str | None = root
        while True:
            if ref is not None and ref not in done:
                if ref in path or ref == "#":
                    raise InvalidArgumentError("recursive schemas are not supported", param=param)
                if not ref.startswith("#"):
                    raise InvalidArgumentError(f"only local $ref values are supported, got {ref!r}", param=param)
                target = _local_ref_target(schema, ref)
                if target is None:
                    raise InvalidArgumentError(f"$ref {ref!r} does not resolve", param=param)
                path.append(ref)
                pending.append(_refs(target))
            while pending and not pending[-1]:  # every ref under the last one is checked
                done.add(path.pop())
                pending.pop()
            if not pending:
                break
            ref = pending[-1].pop()
