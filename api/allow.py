"""The methods a path answers to, for the `Allow` header of a 405 and for OPTIONS.

Starlette's router answers a wrong method with the methods of the first route whose path
matches, so `Allow` on /v1/uploads said POST although GET is there too. Here every method is
tried against every route (through `matches`, the routers' own public test, which also sees
into included routers), plus OPTIONS itself.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match

METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this request's path; empty when no route has it."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return [*allowed, "OPTIONS"] if allowed else []
