"""optuna-dashboard's server on clothopt's storage, on loopback unless told otherwise."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clothopt.dashboard.artifacts import StudyStores, artifact_store
from clothopt.errors import InvalidArgument, NotFound
from clothopt.logging import get_logger
from clothopt.paths import DEFAULT_STORAGE, artifact_dir, masked_url

__all__ = [
    "DashboardServer",
    "serve",
]

_log = get_logger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """optuna-dashboard's WSGI app on a threaded wsgiref server that this process controls.

    ``port=0`` picks a free port (see :attr:`port`). Use :meth:`serve_forever` in the
    foreground, or ``with server.running():`` to serve from a thread and stop cleanly.
    """

    def __init__(
        self,
        storage_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        artifacts: str | os.PathLike[str] | None = None,
    ) -> None:
        from optuna_dashboard import wsgi

        from clothopt.engine import open_storage

        self.storage_url = storage_url or DEFAULT_STORAGE
        _check_sqlite_exists(self.storage_url)
        self.storage = open_storage(self.storage_url)
        self.artifact_dir = artifact_dir(self.storage_url, artifacts)
        # the artifact folder, then each study's store: a store's files show from any host
        stores = StudyStores(artifact_store(self.artifact_dir), self.storage)
        app = wsgi(self.storage, artifact_store=stores)
        self._httpd = _make_server(host, port, app)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # all interfaces: the name others reach it by
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/dashboard/"

    @property
    def exposed(self) -> bool:
        """Reachable from other machines (the dashboard has no authentication)."""
        return not _is_loopback(self.host)

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    @contextlib.contextmanager
    def running(self) -> Iterator[DashboardServer]:
        self._thread = threading.Thread(
            target=self.serve_forever, daemon=True, name="clothopt-dashboard"
        )
        self._thread.start()
        try:
            yield self
        finally:
            self.shutdown()


def _check_sqlite_exists(url: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return  # a bad URL: open_storage says what is wrong with it
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if not path.is_file():  # opening it would create an empty database
            raise NotFound(
                f"no studies at {path} (create one with clothopt study create, or pass --storage)"
            )


def _make_server(host: str, port: int, app: Any) -> Any:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a browser's open request must not keep the process alive
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per poll of every open page is noise

    try:
        return make_server(host, port, app, server_class=Server, handler_class=Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InvalidArgument(
                f"port {port} on {host} is in use (pick another --port)"
            ) from None
        reason = exc.strerror or str(exc)
        raise InvalidArgument(f"cannot listen on {host}:{port}: {reason}") from None


def serve(
    storage_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: str | os.PathLike[str] | None = None,
) -> int:
    """``clothopt dashboard``: serve until Ctrl-C (exit 0); where it serves is logged (INFO)."""
    server = DashboardServer(storage_url, host, port, artifacts)
    if server.exposed:
        _log.warning(
            "the dashboard has no authentication; anyone who can reach %s:%d can "
            "read, change and delete these studies",
            host,
            server.port,
        )
    _log.info("optuna-dashboard on %s", masked_url(server.storage_url))
    _log.info("artifacts in %s", server.artifact_dir)
    _log.info("open %s  (Ctrl-C stops it)", server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        _log.info("dashboard stopped")
    finally:
        server.shutdown()
    return 0
