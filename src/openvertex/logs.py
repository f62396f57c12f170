"""The process's log lines: plain text for a terminal, or one JSON object per line for a log
collector (`log_format = "json"`). A request's line (openvertex.request) carries its record's
fields: as keys of the object, or as `key=value` pairs after the text."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            line.update({key: value for key, value in fields.items() if value is not None})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            text += "".join(f" {key}={printable(str(value))}" for key, value in fields.items() if value is not None)
        return text


def printable(text: str) -> str:
    """`text` as it is when it is one plain word, else quoted with its escapes: a client's path or
    model name cannot break a text log line, or forge one."""
    return text if text.isprintable() and " " not in text and '"' not in text else json.dumps(text)


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
