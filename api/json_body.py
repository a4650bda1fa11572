"""Reading a JSON request body the API parses itself, with limits a client cannot blow through.

Python's parser recurses once per nested array or object and raises RecursionError near depth
1000: uncaught, that was a 500, and uvicorn then closed the keep-alive connection under the
client's next request. So the nesting depth is measured on the raw bytes first (strings
skipped), and a body deeper than `MAX_DEPTH` is a 422 that names the limit: a job spec needs a
handful of levels, and nothing deeper reaches the parser, pydantic or the database.

The parser also reads `NaN`, `Infinity` and `1e999`, which are no JSON numbers and which the
database refuses much later with a misleading message: each is a 422 naming its field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from api.errors import ApiError, FieldErrors
from kdcore.validation import non_finite_numbers

#: Arrays and objects inside one another; a job spec uses about five levels.
MAX_DEPTH = 64

# A JSON string (skipped whole, escapes included) or one bracket. Unrolled so that long strings
# cost no backtracking.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPEN = frozenset(b"[{")


def nesting_depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in `raw`, counted up to `limit + 1` (then it stops)."""
    depth = deepest = 0
    for token in _TOKENS.finditer(raw):
        first = raw[token.start()]
        if first in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif first != ord('"'):
            depth -= 1
    return deepest


async def read_json(request: Request, max_bytes: int, what: str, too_large: ApiError) -> Any:
    """The parsed body, or a 4xx saying what is wrong with it: `too_large` past `max_bytes`,
    422 when it is empty, not JSON, or nested deeper than `MAX_DEPTH`. `what` names the body in
    messages ("the job spec")."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > max_bytes:
            raise too_large
    if not raw.strip():
        raise FieldErrors([("(root)", f"the request body is empty; send {what} as JSON")])
    if nesting_depth(bytes(raw)) > MAX_DEPTH:
        raise FieldErrors(
            [
                (
                    "(root)",
                    f"the JSON is nested too deep: arrays and objects may nest at most "
                    f"{MAX_DEPTH} levels; send {what} without the extra nesting",
                )
            ],
            code="nesting_too_deep",
        )
    try:
        data = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FieldErrors([("(root)", f"the body is not valid JSON: {exc}")]) from None
    if errors := non_finite_numbers(data):
        raise FieldErrors(errors, code="non_finite_number")
    return data
