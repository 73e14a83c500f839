"""Serving a sandbox (any ASGI app) with real uvicorn on a free local port, for the payment tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(app, *, start_seconds: float = 20, graceful_seconds: float = 5) -> Iterator[str]:
    """Serve ``app`` in a daemon thread and yield its base URL; stop it on exit.

    Real HTTP rather than a test client, because timeouts and lost replies only happen on a real socket.
    Requests still held by a fault get ``graceful_seconds`` to finish when the server stops.
    """
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=graceful_seconds))
    thread = threading.Thread(target=server.run, name=f"sandbox-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the sandbox did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=graceful_seconds + 5)
