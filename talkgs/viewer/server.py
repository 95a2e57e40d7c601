"""The viewer's HTTP server: a stdlib ``ThreadingHTTPServer`` in front of a ``ViewerEngine``.

Routes:

- ``GET /``: the page (``page.py``: one HTML file, inline CSS and JS, no build step, no CDN).
- ``GET /info``: JSON of the subject, the clips and the viewer's settings.
- ``GET /audio/<clip>``: the clip as 16-bit WAV, with HTTP Range requests: Chromium seeks an
  <audio> element only in a resource served with ``Accept-Ranges``.
- ``GET /frame?clip=&t=&cam=&scale=&layers=&centres=&blink=``: the JPEG of the clip's frame at audio
  time t (headers ``X-Frame``, ``X-Size``, ``X-Render-Ms``, ``X-Wait-Ms``).
- ``POST /upload``: an audio or video file as the raw body, its name in ``X-Filename``; answers the
  new clip as JSON, or ``{"error": message}`` for a file that is too big or not audio.

One thread per connection, so a tab waiting for its frame never blocks another tab's audio or
upload; rendering itself goes through the engine's one fair lock.
"""

from __future__ import annotations

import errno
import json
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from talkgs.errors import TalkgsError
from talkgs.utils import log
from talkgs.viewer.config import ViewerConfig

#: Bodies bigger than this are not even drained before the connection is closed.
_DRAIN_LIMIT = 1 << 30


class ViewerServer(ThreadingHTTPServer):
    """The bound server; ``engine`` is attached once the subject is loaded (``serve``).

    Binding happens in the constructor, so a port in use fails at once, before the subject loads.
    """

    daemon_threads = True  # a tab left open does not keep the process alive after Ctrl-C

    def __init__(self, cfg: ViewerConfig):
        self.cfg = cfg
        self.engine = None
        self.address_family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        try:
            super().__init__((cfg.host, cfg.port), ViewerHandler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise TalkgsError(f"port {cfg.port} on {cfg.host} is already in use; pass --port with another "
                                  "one (or --port 0 for any free port)") from None
            raise TalkgsError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.cfg.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # what a browser on this machine can open
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """(first, last) bytes of a single ``Range: bytes=a-b`` header, None for the whole file.

    Raises ValueError for a range that does not overlap the file (answered 416).
    """
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # multi-range or malformed: RFC 9110 lets a server ignore it and send everything
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), length - 1) if m.group(2) else length - 1
    else:  # suffix range: the last N bytes
        first, last = max(0, length - int(m.group(2))), length - 1
    if first >= length or first > last:
        raise ValueError(f"range {header!r} outside {length} bytes")
    return first, last


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries a tab's stream of frames

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; with Nagle's algorithm the second waits for the
        # client's delayed ACK, adding ~40 ms to every frame.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # one line per frame would flood the terminal; errors are reported in _fail

    # -- responses -------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _fail(self, e: Exception) -> None:
        if isinstance(e, TalkgsError):
            self._json({"error": str(e)}, 400)
        else:  # a bug: the page shows it, the terminal gets one line, the server goes on
            log.warn(f"viewer: {self.command} {urlsplit(self.path).path}: {type(e).__name__}: {e}")
            self._json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    def _guard(self, fn) -> None:
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the tab went away mid-answer
        except Exception as e:
            try:
                self._fail(e)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    # -- routes ----------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._guard(self._get)

    def do_HEAD(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        parts = urlsplit(self.path)
        engine = self.server.engine
        if parts.path in ("/", "/index.html"):
            from talkgs.viewer.page import PAGE

            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif parts.path == "/info":
            self._json(engine.info())
        elif parts.path.startswith("/audio/"):
            self._audio(engine.clip(unquote(parts.path[len("/audio/"):])).wav)
        elif parts.path == "/frame":
            from talkgs.viewer.engine import FrameRequest

            frame = engine.render(FrameRequest.from_query(parse_qs(parts.query)))
            self._send(200, frame.jpeg, "image/jpeg",
                       {"X-Frame": frame.index, "X-Size": frame.size, "X-Render-Ms": f"{frame.render_ms:.1f}",
                        "X-Wait-Ms": f"{frame.wait_ms:.1f}"})
        elif parts.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._json({"error": f"no page {parts.path}"}, 404)

    def _audio(self, wav: bytes) -> None:
        try:
            span = parse_range(self.headers.get("Range"), len(wav))
        except ValueError:
            self._send(416, b"", "audio/wav", {"Content-Range": f"bytes */{len(wav)}"})
            return
        if span is None:
            self._send(200, wav, "audio/wav", {"Accept-Ranges": "bytes"})
        else:
            first, last = span
            self._send(206, wav[first:last + 1], "audio/wav",
                       {"Accept-Ranges": "bytes", "Content-Range": f"bytes {first}-{last}/{len(wav)}"})

    def _post(self) -> None:
        if urlsplit(self.path).path != "/upload":
            self._json({"error": f"no page {self.path}"}, 404)
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._json({"error": "the upload needs a Content-Length"}, 411)
            return
        length = int(length)
        cfg = self.server.cfg
        name = unquote(self.headers.get("X-Filename", "upload"))
        if length > cfg.max_upload_mb * 1024 * 1024:
            # Read the body away (up to a bound) so the browser sees the answer, not a reset connection.
            left = length if length <= _DRAIN_LIMIT else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            self.close_connection = True
            self._json({"error": f"{name} is {length / 2**20:.1f} MB; the viewer takes at most "
                                 f"{cfg.max_upload_mb:g} MB"}, 413)
            return
        data = self.rfile.read(length)
        clip = self.server.engine.upload(data, name)
        log.info(f"viewer: loaded {clip.name} ({clip.duration:.1f} s, {clip.num_frames} frames) as clip {clip.id}")
        self._json(clip.info())


def serve(subject_dir, cfg: ViewerConfig | None = None, ready=None) -> None:
    """Load ``subject_dir`` and serve the viewer until interrupted (``talkgs view``).

    ``ready(server)`` is called once the subject is loaded and the server is about to answer, e.g.
    to print the URL. The port is bound first, so a port in use fails before the subject loads.
    """
    from talkgs.viewer.engine import ViewerEngine

    cfg = cfg or ViewerConfig()
    server = ViewerServer(cfg)
    try:
        server.engine = ViewerEngine(subject_dir, cfg)
        if ready is not None:
            ready(server)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
