"""Run the app with uvicorn: bound before the model is announced, guarded against slow and idle clients, shut
down gracefully.

Each connection must deliver a request's headers within ``header_timeout_s`` of its first byte (or of the
connection's opening), else it is answered 408 and closed; beyond ``max_connections`` open connections a new one
is answered 503 + ``Retry-After`` and closed (:func:`guarded_http_protocol`; a slowloris client cannot hold
connections open). Both are counted in ``ppdeploy_request_errors_total`` (``header_timeout``,
``connection_limit``).

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


def guarded_http_protocol(settings: ServeSettings, count: Callable[[str], None] | None = None) -> type:
    """uvicorn's HTTP protocol with a header-read deadline and a cap on open connections.

    Args:
        settings: ``header_timeout_s``, ``max_connections`` and ``retry_after_s``.
        count: called with the reason (``header_timeout``, ``connection_limit``) of each connection refused.
    """
    import json

    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: Any = None
        _armed_for: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                self._refuse(503, "Service Unavailable", "connection_limit", f"server | {settings.max_connections} "
                             "connections open, the limit | retry later", retry_after=settings.retry_after_s)
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a new request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._armed_for:
                self._disarm()  # a new request cycle began: its headers are in

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._armed_for = self.cycle
            self._header_timer = self.loop.call_later(settings.header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            self._refuse(408, "Request Timeout", "header_timeout", f"request headers | not received within "
                         f"{settings.header_timeout_s:g} s | send the request at once")

        def _refuse(self, status: int, phrase: str, reason: str, detail: str, retry_after: int | None = None) -> None:
            if count is not None:
                count(reason)
            body = json.dumps({"detail": detail, "error": detail}).encode()
            retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
            head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n{retry}connection: close\r\n\r\n")
            if not self.transport.is_closing():
                self.transport.write(head.encode() + body)
                self.transport.close()

    return GuardedHTTPProtocol


def uvicorn_server(app: Any, settings: ServeSettings, *, access_log: bool = False, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` whose readiness turns to "draining" as soon as shutdown begins."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            stop = await super().on_tick(counter)
            if stop and hasattr(app.state, "serving"):
                app.state.serving.draining = True
            return stop

    state = getattr(app.state, "serving", None)
    count = (lambda reason: state.metrics.errors.labels(reason).inc()) if state is not None else None
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", access_log=access_log,
                            log_level=log_level, timeout_graceful_shutdown=settings.shutdown_timeout_s,
                            timeout_keep_alive=5, http=guarded_http_protocol(settings, count))
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
            f" | POST /v1/classify, /v2/models/{state.model.name}/infer (Open Inference Protocol), GET /healthz "
            f"/readyz /metrics, docs at /docs | max batch {settings.max_batch}, "
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
