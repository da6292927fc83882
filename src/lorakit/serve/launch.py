"""Start the server: build everything (models, adapters), bind, then hand over to uvicorn."""

from __future__ import annotations

import socket

from lorakit.serve.config import ServeConfig


def serve(config: ServeConfig, say=print) -> None:
    import uvicorn

    from lorakit.serve.app import create_app
    from lorakit.serve.server import Server

    server = Server(config)  # every model and adapter checked before the port opens
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        server.close()
        from lorakit.errors import ConfigError

        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    # listen before saying so: a client that connects between this line and uvicorn's start
    # waits in the backlog instead of being refused (CI once saw "connection refused" here)
    sock.listen(2048)
    port = sock.getsockname()[1]
    names = ", ".join(server.catalog.entries)
    say(server.precision.line(), flush=True)
    say(f"lorakit serve: listening on http://{config.host}:{port} (models: {names})", flush=True)
    app = create_app(server)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        uv.run(sockets=[sock])
    finally:
        server.close()
