"""Run the app with uvicorn: bound before the model is announced, shut down gracefully.

On SIGINT or SIGTERM uvicorn stops accepting connections, lets in-flight requests finish (up to
``shutdown_timeout_s``), then the app's lifespan drains the batch queue and closes the extra runtimes. A second
SIGINT forces the exit.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ppdeploy.errors import DeployError, one_line
from ppdeploy.serving.settings import ServeSettings


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port), or a ``DeployError`` saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise DeployError(one_line(f"address {host}:{port}", f"cannot be used ({exc.strerror or exc})",
                                   "check --host")) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise DeployError(one_line(f"address {host}:{port}", f"cannot listen ({exc.strerror or exc})",
                                   "choose another --port, or stop the server using it")) from None
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app: Any, settings: ServeSettings, *, access_log: bool = False, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` whose readiness turns to "draining" as soon as shutdown begins."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            stop = await super().on_tick(counter)
            if stop and hasattr(app.state, "serving"):
                app.state.serving.draining = True
            return stop

    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", access_log=access_log,
                            log_level=log_level, timeout_graceful_shutdown=settings.shutdown_timeout_s,
                            timeout_keep_alive=5)
    return _Server(config)


def serve(source: Any, settings: ServeSettings | None = None, *, sock: socket.socket | None = None,
          access_log: bool = False, log: Callable[[str], None] | None = None) -> None:
    """Serve a loaded Classifier (or Runtime) until SIGINT/SIGTERM. Blocks.

    Args:
        source: what :func:`~ppdeploy.serving.app.create_app` takes.
        settings: server settings.
        sock: a socket from :func:`bind_socket` (bound before a slow model load, so a busy port fails fast);
            by default ``settings.host:settings.port`` is bound here. It is closed on return.
        access_log: log every request.
        log: called with the line announcing the address.

    Raises:
        DeployError: the address cannot be bound.
    """
    from ppdeploy.serving.app import create_app

    settings = settings or ServeSettings()
    sock = sock or bind_socket(settings.host, settings.port)
    app = create_app(source, settings)
    state = app.state.serving
    if log:
        log(f"serving {state.model.name} on {state.model.backend} ({state.model.precision()}) at {socket_url(sock)}"
            f" | POST /v1/classify, GET /healthz /readyz /metrics, docs at /docs | max batch {settings.max_batch}, "
            f"max delay {settings.max_delay_ms:g} ms, {settings.workers} worker(s)")
    try:
        uvicorn_server(app, settings, access_log=access_log).run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def serve_in_thread(app: Any, settings: ServeSettings | None = None, *, timeout_s: float = 60.0,
                    log_level: str = "warning") -> Iterator[tuple[str, Any]]:
    """Run ``app`` on a background thread (no signal handling) and yield ``(base_url, uvicorn_server)``.

    The server binds ``settings.host:settings.port`` (port 0: a free one). Leaving the block shuts it down
    gracefully, as SIGTERM would.
    """
    settings = settings or ServeSettings(port=0)
    sock = bind_socket(settings.host, settings.port)
    server = uvicorn_server(app, settings, log_level=log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ppdeploy-uvicorn", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread, timeout_s)
        yield socket_url(sock), server
    finally:
        server.should_exit = True
        thread.join(timeout_s + settings.shutdown_timeout_s)
        sock.close()


def _wait_started(server: Any, thread: threading.Thread, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise DeployError(one_line("server thread", "stopped during startup", "see the log above"))
        if time.monotonic() > deadline:
            raise DeployError(one_line("server thread", f"not started within {timeout_s:g} s"))
        time.sleep(0.02)
