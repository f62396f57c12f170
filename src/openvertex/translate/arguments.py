"""Function-call arguments as JSON text: whole (`compact_json`) or streamed from Gemini's
`partialArgs` (`ArgumentWriter`), so that the fragments concatenate to exactly the whole text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from openvertex.protocol import generate_content as gc

_PATH_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\[\"((?:[^\"\\]|\\.)*)\"\]")


def _canonical(value: Any) -> Any:
    """Gemini's Struct numbers are doubles: 5.0 and 5 are one value, written 5, and an integer
    past 2^53 is the double nearest to it."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        value = float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def compact_json(value: Any) -> str:
    return json.dumps(_canonical(value), separators=(",", ":"))


def parse_json_path(path: str) -> list[str | int]:
    """`$.a.b[0]['c d']` → ["a", "b", 0, "c d"] (the RFC 9535 subset that names one value)."""
    if not path.startswith("$"):
        raise ValueError(f"not a JSON path: {path!r}")
    steps: list[str | int] = []
    position = 1
    while position < len(path):
        match = _PATH_STEP.match(path, position)
        if match is None:
            raise ValueError(f"unsupported JSON path: {path!r}")
        name, index, single, double = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            quoted = single if single is not None else double
            steps.append(name if name is not None else re.sub(r"\\(.)", r"\1", quoted))
        position = match.end()
    return steps


def _scalar(arg: gc.PartialArg) -> str | None:
    """The JSON text of a non-string value, or None for a string."""
    if arg.string_value is not None:
        return None
    if arg.bool_value is not None:
        return "true" if arg.bool_value else "false"
    if arg.number_value is not None:
        return compact_json(arg.number_value)
    return "null"


class ArgumentWriter:
    """Turns one call's partial arguments, in order, into JSON text fragments.

    Containers are opened as paths descend into them and closed lazily, when a later path
    leaves them or at `finish`, which writes whatever the fragments have not yet said.
    """

    def __init__(self) -> None:
        self._written = ""
        self._path: list[str | int] = []  # the leaf written last
        self._open: list[bool] = []  # containers below the root along _path[:-1]: has items?
        self._root_has_items = False
        self._in_string = False

    def _emit(self, text: str) -> str:
        self._written += text
        return text

    def feed(self, arg: gc.PartialArg) -> str:
        steps = parse_json_path(arg.json_path or "$")
        if not steps:
            return ""  # a value for the root itself cannot be a fragment of an object
        out = "{" if not self._written else ""
        if self._in_string and steps == self._path:
            return self._emit(out + self._string_piece(arg))
        if self._in_string:
            out += '"'
            self._in_string = False
        keep = 0
        while keep < min(len(self._path), len(steps)) - 1 and self._path[keep] == steps[keep]:
            keep += 1
        keep = min(keep, len(self._open))
        for _ in range(len(self._open) - keep):
            out += "]" if isinstance(self._path[len(self._open)], int) else "}"
            self._open.pop()
        for depth in range(keep, len(steps)):
            out += self._member_prefix(steps, depth)
            if depth < len(steps) - 1:
                out += "[" if isinstance(steps[depth + 1], int) else "{"
                self._open.append(False)
        self._path = steps
        scalar = _scalar(arg)
        if scalar is not None:
            return self._emit(out + scalar)
        self._in_string = True
        return self._emit(out + '"' + self._string_piece(arg))

    def _member_prefix(self, steps: list[str | int], depth: int) -> str:
        """`,` when the parent already has a member, then `"key":` when the parent is an object."""
        has_items = self._open[depth - 1] if depth else self._root_has_items
        if depth:
            self._open[depth - 1] = True
        else:
            self._root_has_items = True
        step = steps[depth]
        return ("," if has_items else "") + ("" if isinstance(step, int) else json.dumps(step) + ":")

    def _string_piece(self, arg: gc.PartialArg) -> str:
        piece = json.dumps(arg.string_value or "")[1:-1]
        if not arg.will_continue:
            self._in_string = False
            return piece + '"'
        return piece

    def finish(self, args: dict[str, Any] | None) -> str:
        """The rest of the text: of the whole arguments when the last piece carries them, else
        (or if the fragments strayed from them) the closing of what is open."""
        if args is not None:
            whole = compact_json(args)
            if whole.startswith(self._written):
                return self._emit(whole[len(self._written) :])
        if not self._written:
            return self._emit("{}")
        closing = '"' if self._in_string else ""
        for depth in reversed(range(len(self._open))):
            closing += "]" if isinstance(self._path[depth + 1], int) else "}"
        self._in_string, self._open = False, []
        return self._emit(closing + "}")
