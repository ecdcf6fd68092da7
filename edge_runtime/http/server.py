"""The HTTP server: Starlette on uvicorn (h11), in one thread of the daemon with its own event loop.

Bounds, all from ``[http]``: open connections (``max_connections``: one over is closed at once;
uvicorn's ``limit_concurrency`` answers 503 to requests beyond it), request headers within
``header_timeout_s`` (a slowloris client is cut off, on the first request and on every keep-alive
one), header size (16 KiB), bodies (``max_body_bytes``, ``body_timeout_s``), idle keep-alive
(``keepalive_s``), stream clients (``max_stream_clients``, each with a bounded queue) and predict
requests (``predict.max_pending``). The server never blocks the pipelines: results reach it
through :class:`~edge_runtime.http.hub.Hub`, and predict runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.http.auth import HttpConfigError, read_token
from edge_runtime.http.config import HttpConfig, is_loopback
from edge_runtime.http.host import Host
from edge_runtime.http.hub import Hub
from edge_runtime.http.predict import Predictor
from edge_runtime.supervision import spawn

if TYPE_CHECKING:
    import uvicorn

    from edge_runtime.http.context import Context

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


class HttpError(EdgeRuntimeError, OSError):
    """The server could not listen on its address."""


class HttpServer:
    """The local HTTP API of one daemon; :meth:`start` listens, :meth:`stop` closes everything."""

    def __init__(self, config: HttpConfig, host: Host, resolve: Callable[[str], Path]) -> None:
        """Reads the token and checks the TLS files now, so a daemon that cannot serve them
        refuses to start (:class:`HttpConfigError`); Starlette and uvicorn load in :meth:`start`."""
        self.config = config
        self.token = read_token(resolve(config.token_file)) if config.token_file else None
        if self.token is None and not is_loopback(config.host):
            raise HttpConfigError(f"http.host {config.host!r} is not loopback: http.token_file is required")
        self.tls: tuple[Path, Path] | None = None
        if config.tls.cert:
            cert, key = resolve(config.tls.cert), resolve(config.tls.key)
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise HttpConfigError(f"http.tls: cannot load {cert} and {key}: {exc}") from None
            self.tls = (cert, key)
        self.hub = Hub(config.max_stream_clients, config.stream_queue)
        self.predictor = Predictor(config.predict)
        self.host = host
        self.ctx: Context | None = None
        self.port = config.port
        self._server: uvicorn.Server | None = None
        self._protocol: type | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None
        self._unsubscribe: Callable[[], None] | None = host.http_subscribe(self.hub.publish)

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        """Listen (raises :class:`HttpError` when the address is taken) and serve in a thread."""
        import uvicorn

        from edge_runtime.http.app import MAX_HEADER_BYTES, GuardedH11Protocol, build_app
        from edge_runtime.http.context import Context

        self.ctx = Context(self.config, self.host, self.hub, self.predictor)
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # Nagle's algorithm holds each response body for the client's delayed ACK (40 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
            sock.listen(min(128, self.config.max_connections * 2))
        except OSError as exc:
            sock.close()
            raise HttpError(
                exc.errno, f"http {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from None
        self.port = int(sock.getsockname()[1])
        protocol = type(
            "EdgeH11Protocol",
            (GuardedH11Protocol,),
            {
                "max_connections": self.config.max_connections,
                "header_timeout_s": self.config.header_timeout_s,
            },
        )
        self._protocol = protocol
        uv_config = uvicorn.Config(
            build_app(self.ctx, self.token),
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=self.config.max_connections,
            timeout_keep_alive=self.config.keepalive_s,
            timeout_graceful_shutdown=1,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            ssl_certfile=str(self.tls[0]) if self.tls else None,
            ssl_keyfile=str(self.tls[1]) if self.tls else None,
        )
        self._server = uvicorn.Server(uv_config)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no start-up chatter
        ready = threading.Event()
        # supervised, not restarted: a crashed server is logged and reported (thread.crashed) and
        # the pipelines go on without it
        self._thread = spawn("http", lambda: self._run(sock, ready), restart=False)
        if not ready.wait(START_TIMEOUT_S) or self._failed is not None:
            self.stop()
            raise HttpError(f"http {self.url}: the server did not start: {self._failed or 'timeout'}")
        log.info(
            "serving the HTTP API and page on %s%s",
            self.url,
            " (bearer token required)" if self.token else "",
        )

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        server, ctx = self._server, self.ctx
        assert server is not None and ctx is not None

        async def main() -> None:
            ctx.stopping = asyncio.Event()
            task = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            ready.set()
            await task

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self._failed = exc  # for start(); the supervisor logs and reports the crash
            raise
        finally:
            ready.set()
            sock.close()
            loop.close()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop serving: streams end, connections close, the port is free afterwards."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        server, loop = self._server, self._loop
        if server is not None:
            server.should_exit = True
            stopping = self.ctx.stopping if self.ctx is not None else None
            if loop is not None and stopping is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("http server did not stop within %.1f s", timeout)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "connections": len(self._server.server_state.connections) if self._server else 0,
            "cut_off": getattr(self._protocol, "cut_off", 0),
            **self.hub.stats(),
            "predict": self.predictor.stats(),
        }
