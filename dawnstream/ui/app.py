"""The dashboard's web app (Starlette, served by uvicorn): the page, its static files and
``GET /api/state``. Only GET routes: nothing here can change a job.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson

from dawnstream.ui.collector import Collector

STATIC = Path(__file__).resolve().parent / "static"


def create_app(collector: Collector) -> Any:
    """A Starlette app over ``collector``: ``/`` (the page), ``/static/*``, ``/api/state`` (JSON) and
    ``/healthz``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def index(_: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def state(_: Request) -> Response:
        return Response(orjson.dumps(collector.state()), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def health(_: Request) -> Response:
        return Response(orjson.dumps({"scrapes": collector.scrapes, "endpoints": len(collector.endpoints)}),
                        media_type="application/json")

    return Starlette(routes=[Route("/", index), Route("/api/state", state), Route("/healthz", health),
                             Mount("/static", StaticFiles(directory=STATIC), name="static")])


def serve(collector: Collector, host: str = "127.0.0.1", port: int = 8686) -> None:
    """Start ``collector`` and serve the dashboard until SIGINT/SIGTERM (uvicorn's handlers).

    Raises:
        OSError: ``host:port`` cannot be bound.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGTERM/SIGINT is a stop request: shut down and exit 0, as a worker does (uvicorn would re-raise
            # the signal after its graceful shutdown, and the process would end killed by it)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    collector.start()
    try:
        _Server(uvicorn.Config(create_app(collector), host=host, port=port, log_level="warning",
                               access_log=False)).run()
    finally:
        collector.stop()
