"""A small reader for Server-Sent Events (`text/event-stream`), enough for /v1/jobs/{id}/stream:
`event:` and `data:` lines, a blank line ends an event, `:` lines are keep-alive comments."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def events(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event name, decoded JSON data) for each event in a stream of lines."""
    name = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    yield name, json.loads(text)
                except ValueError:
                    yield name, text
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
