"""`dcgan web serve`: the built folder over HTTP on 127.0.0.1 (browsers refuse ES modules and wasm from file://).

Every answer says `Cache-Control: no-store`, so a rebuilt page with a new champion is what the next reload shows.
"""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

from dcgan.errors import DcganError


class PageHandler(http.server.SimpleHTTPRequestHandler):
    # The types browsers insist on for modules and for wasm streaming compilation.
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".json": "application/json",
    }

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
        pass


def page_server(folder: Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server for `folder` (a `dcgan web build` output), bound but not yet serving."""
    if not (folder / "index.html").is_file() or not (folder / "card.json").is_file():
        raise DcganError(f"{folder}: not a built page (no index.html and card.json): run `dcgan web build` first")
    try:
        return http.server.ThreadingHTTPServer((host, port), functools.partial(PageHandler, directory=str(folder)))
    except OSError as err:
        raise DcganError(f"{host}:{port}: cannot listen there ({err.strerror or err}); pick another --port") from None


def serve_page(folder: Path, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Serve `folder` until Ctrl-C, saying where first."""
    server = page_server(folder, host, port)
    print(f"the page: http://{host}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return "stopped"
