"""``bench dashboard``: optuna-dashboard on a study storage, bound to loopback by default.

The dashboard has no authentication: anyone who reaches the port can read and edit the studies
(notes, trial states). Keep it on 127.0.0.1 and use an SSH tunnel from elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from bench.errors import BenchError
from bench.tuning import storage as storages

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Server(ThreadingMixIn, WSGIServer):
    # The dashboard polls several endpoints at once; one thread per request keeps it responsive.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per poll is noise
        pass


def make_dashboard_server(
    storage: str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    out: str | os.PathLike = "results",
) -> WSGIServer:
    """A WSGI server (not yet serving) for optuna-dashboard on the storage; ``serve_forever()``
    runs it, ``shutdown()`` stops it. The default storage is ``<out>/studies/journal.log``."""
    from optuna_dashboard import wsgi

    spec = storages.resolve(storage, out)
    app = wsgi(storages.open_storage(spec, create=False))
    try:
        return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise BenchError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


def serve(
    storage: str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    out: str | os.PathLike = "results",
    say: Callable[[str], None] = print,
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    server = make_dashboard_server(storage, host=host, port=port, out=out)
    spec = storages.resolve(storage, out)
    say(f"optuna-dashboard on http://{host}:{server.server_port}/ for {storages.describe(spec)}")
    if host not in LOOPBACK:
        say(f"warning: bound to {host}: the dashboard has no authentication")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
