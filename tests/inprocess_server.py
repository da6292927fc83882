"""A real lorakit server in this process: uvicorn on 127.0.0.1 (port 0) in a thread, so a
test can reach into the engine (hold it still, read its caches) while clients use HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from lorakit.serve.app import create_app
from lorakit.serve.config import ServeConfig
from lorakit.serve.server import Server


@contextlib.contextmanager
def serving(model_dir, **settings):
    server = Server(ServeConfig(model=str(model_dir), **settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.01)
    try:
        yield server, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(10)
        server.close()
