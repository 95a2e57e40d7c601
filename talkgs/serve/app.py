"""The HTTP + WebSocket API of ``talkgs serve`` (FastAPI): the same app embedded in one process or on Ray Serve.

Routes (every one needs ``Authorization: Bearer TOKEN`` when the server has a token):

- ``GET /healthz``: ``{"ok": true}`` and which process answers (a Ray replica says its id).
- ``GET /models``: the servable models (name, file, resolution, fps, drive path, encoders, size).
- ``GET /metrics``: sessions (open, total), frames sent and dropped, jobs, chunk-to-frame latency percentiles.
- ``WS /session``: a live session. The client sends one JSON object (``SessionOptions``: ``model``, ``format``
  jpeg|png|raw, ``size``, ``pose`` replay|static, ``blink``, ``background`` original|colour, ``yaw``, ``pitch``,
  ``lookahead_s``), gets ``{"type": "ready", ...}``, then sends speech as binary 16-bit mono PCM at 16 kHz in
  chunks of any length and receives each finished frame as one binary message (``session.FRAME_HEADER``: frame
  index and audio time, then the image). ``{"type": "end"}`` asks for the frames still owed; the server sends
  them, ``{"type": "done", "frames": N, "dropped": D, "skipped": K}`` and closes with 1000 (``dropped``: frames the
  client read too slowly to get; ``skipped``: frames too late to render on a server with more sessions than it
  renders in real time, ``ServeConfig.late_frames``). A session refused or ended early
  gets ``{"type": "error", "message": ...}`` and a close code: 4400 bad options or speech, 4404 unknown model,
  4408 the client reads too slowly (``slow_client: close``), 4413 a chunk or session too long, 4503 server full,
  1011 an internal error.
- ``POST /render?model=NAME&...``: a job. The body is a speech file (any format ffmpeg reads); the answer is the
  MP4 ``talkgs render`` writes for it (the same bytes), or ``{"error": ...}`` with 400 (bad speech or options),
  404 (unknown model) or 413 (too big).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (WebSocket, Request) at run time,
# and they are imported inside ``build_app`` so that importing talkgs needs no FastAPI.
import asyncio
import hmac
import json
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from talkgs.errors import TalkgsError
from talkgs.serve.config import ServeConfig
from talkgs.serve.models import ModelCatalog, UnknownModel
from talkgs.serve.session import SAMPLE_RATE, LiveSession, SessionOptions, TooLarge
from talkgs.utils.threads import FairSlots

#: Seconds a new WebSocket has to send its options before it is closed.
OPEN_TIMEOUT_S = 30.0
#: Latencies kept for the percentiles of ``/metrics`` (the most recent frames).
LATENCY_WINDOW = 10_000
#: Seconds a session that ends early waits for the client to take its error message and close frame.
CLOSE_WAIT_S = 5.0
_DONE = object()  # the sender's end-of-session marker


class Closed(Exception):
    """A session ends early: close code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class Service:
    """What the routes share: the catalog, how a model is got, the render slots, and the counters.

    ``get_model(name)`` is awaited for a model: the embedded server's ``ModelCache``, or a Ray replica's multiplexed
    loader. ``replica`` names the process in ``/healthz``.
    """

    def __init__(self, catalog: ModelCatalog, cfg: ServeConfig, get_model: Callable[[str], Awaitable[object]],
                 loaded: Callable[[], list[str]], replica: str | None = None):
        self.catalog = catalog
        self.cfg = cfg
        self.get_model = get_model
        self.loaded = loaded
        self.replica = replica or f"pid {os.getpid()}"
        self.device = cfg.device  # "auto": CUDA when there is a GPU, whatever device the fit ran on
        self.slots = FairSlots(cfg.render_slots)  # render turns, in arrival order: no session starves another
        self._lock = threading.Lock()
        self.sessions = 0
        self.counts = {"sessions_total": 0, "sessions_refused": 0, "frames_sent": 0, "frames_dropped": 0,
                       "frames_skipped": 0,
                       "jobs_done": 0, "jobs_failed": 0}
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    async def model(self, name: str):
        self.catalog[name]  # unknown names fail here, before any loading
        return await self.get_model(name)

    async def run(self, fn, *args, slot: bool = True):
        """``fn(*args)`` on a worker thread, holding a render slot (renders take turns on the cores) unless
        ``slot`` is False (a job takes a slot per batch of frames itself)."""
        def call():
            if not slot:
                return fn(*args)
            with self.slots:
                return fn(*args)

        return await asyncio.to_thread(call)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def metrics(self) -> dict:
        import numpy as np

        lat = np.array(self.latencies_ms) if self.latencies_ms else None
        pct = {f"p{p}": round(float(np.percentile(lat, p)), 1) for p in (50, 95, 99)} if lat is not None else {}
        return {"replica": self.replica, "sessions_open": self.sessions, **self.counts,
                "latency_ms": {**pct, "frames": 0 if lat is None else len(lat)}, "models_loaded": self.loaded()}

    def authorized(self, headers, query) -> bool:
        token = self.cfg.token
        if token is None:
            return True
        given = headers.get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else query.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())


_SERVICE: Service | None = None


def set_service(service: Service) -> None:
    """Attach the service the routes use (one per process: the embedded server's, or a Ray replica's)."""
    global _SERVICE
    _SERVICE = service


def current() -> Service:
    """The process's service. The routes call this rather than read ``_SERVICE``: Ray pickles the app's route
    functions by value, with a copy of the globals they read, and a module function is pickled by reference."""
    return _SERVICE


def _status(e: TalkgsError) -> int:
    """The HTTP status of a refused request; a WebSocket closes with 4000 + it."""
    return 404 if isinstance(e, UnknownModel) else 413 if isinstance(e, TooLarge) else 400


def build_app():
    """The FastAPI app; its routes use the process's ``Service`` (``set_service``)."""
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.background import BackgroundTask

    from talkgs import __version__

    app = FastAPI(title="talkgs", version=__version__, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def bearer(request: Request, call_next):
        if not current().authorized(request.headers, request.query_params):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True, "replica": current().replica, "version": __version__}

    @app.get("/models")
    async def models():
        return {"models": current().catalog.info()}

    @app.get("/metrics")
    async def metrics():
        return current().metrics()

    @app.post("/render")
    async def render(request: Request):
        svc = current()
        folder = Path(tempfile.mkdtemp(prefix="talkgs-job-", dir=svc.cfg.tmp_dir))
        try:
            options = SessionOptions.parse(dict(request.query_params) | {"format": "jpeg"})
            options.drive_config()
            model = await svc.model(options.model)
            speech = await _receive_upload(request, folder / "speech", svc.cfg.max_upload_mb)
            out = folder / "out.mp4"
            await svc.run(_render_job, model, speech, out, options, svc, slot=False)
        except TalkgsError as e:
            shutil.rmtree(folder, ignore_errors=True)
            svc.count("jobs_failed")
            message = str(e).replace(f"{folder}/speech", "the speech file")  # the server's paths are its own
            return JSONResponse({"error": message}, status_code=_status(e))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            svc.count("jobs_failed")
            raise
        svc.count("jobs_done")
        return FileResponse(out, media_type="video/mp4", filename=f"{options.model}.mp4",
                            background=BackgroundTask(shutil.rmtree, folder, True))

    @app.websocket("/session")
    async def session(ws: WebSocket):
        svc = current()
        if not svc.authorized(ws.headers, ws.query_params):
            await ws.close(code=4401, reason="missing or wrong bearer token")  # before accept: HTTP 403
            return
        await ws.accept()
        if svc.sessions >= svc.cfg.max_sessions:
            svc.count("sessions_refused")
            await _close(ws, Closed(4503, f"this server is full ({svc.cfg.max_sessions} sessions); try again later"))
            return
        svc.sessions += 1
        svc.count("sessions_total")
        live = None
        try:
            live = await _open(ws, svc)
            await _converse(ws, svc, live)
        except Closed as c:
            await _close(ws, c)
        except WebSocketDisconnect:
            pass  # the client left: nothing to tell it
        except Exception as e:
            await _close(ws, Closed(1011, f"internal error: {type(e).__name__}: {e}"))
            raise
        finally:
            svc.sessions -= 1
            if live is not None:
                svc.count("frames_skipped", live.skipped)
                live.release()

    return app


async def _open(ws, svc: Service) -> LiveSession:
    try:
        first = await asyncio.wait_for(ws.receive_json(), OPEN_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise Closed(4400, f"no options within {OPEN_TIMEOUT_S:g} s of connecting") from None
    except ValueError:
        raise Closed(4400, "the first message must be a JSON object of options") from None
    try:
        options = SessionOptions.parse(first)
        model = await svc.model(options.model)
        live = await svc.run(LiveSession, model, options, svc.cfg, svc.device)
    except TalkgsError as e:
        raise Closed(4000 + _status(e), str(e)) from None
    await ws.send_json(live.info() | {"replica": svc.replica})
    return live


async def _converse(ws, svc: Service, live: LiveSession) -> None:
    """Read speech, render, and send frames until the client ends or leaves.

    Three tasks: a reader puts the speech that arrives into an inbox (at most ``max_chunk_s`` of it: past that it
    stops reading, and the client's sends wait, over TCP); this loop renders everything in the inbox at once
    whenever it gets a render slot (a session that waited for its turn catches up in one batch, skipping what is
    already too late); a sender empties the frame queue as fast as the client reads. Past ``send_queue_frames``
    waiting frames the next render waits for the queue to drain, for at most ``slow_client_wait_s``; then
    ``slow_client`` decides: the oldest frames are dropped, or the session closes. So the queue never holds more
    than the limit plus one render's frames.
    """
    from starlette.websockets import WebSocketDisconnect

    cfg = svc.cfg
    queue: deque = deque()
    ready, drained = asyncio.Event(), asyncio.Event()
    dropped = 0
    inbox: list[bytes] = []
    arrived, room = asyncio.Event(), asyncio.Event()
    room.set()
    state: dict = {"end": False, "error": None, "since": None, "bytes": 0}
    inbox_limit = int(cfg.max_chunk_s * SAMPLE_RATE) * 2

    async def reader() -> None:
        try:
            while True:
                await room.wait()
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                data = message.get("bytes")
                if data is not None:
                    live.check_chunk(data)
                    inbox.append(data)
                    state["since"] = state["since"] or time.perf_counter()
                    state["bytes"] += len(data)
                    if state["bytes"] >= inbox_limit:
                        room.clear()
                    arrived.set()
                elif _is_end(message.get("text")):
                    state["end"] = True
                    return
                else:
                    raise Closed(4400, "send speech as binary 16-bit PCM, or the text {\"type\": \"end\"}")
        except TalkgsError as e:
            state["error"] = Closed(4000 + _status(e), str(e))
        except (Closed, WebSocketDisconnect) as e:
            state["error"] = e
        finally:
            arrived.set()

    async def sender() -> None:
        while True:
            await ready.wait()
            ready.clear()
            while queue:
                item, t0 = queue.popleft()
                if len(queue) <= cfg.send_queue_frames:
                    drained.set()
                if item is _DONE:
                    await ws.send_json({"type": "done", "frames": live.frames, "dropped": dropped,
                                        "skipped": live.skipped})
                    await ws.close(1000)
                    return
                await ws.send_bytes(live.encode(*item))
                svc.latencies_ms.append(1000.0 * (time.perf_counter() - t0))
                svc.count("frames_sent")

    async def enqueue(items: list, t0: float) -> None:
        nonlocal dropped
        queue.extend((item, t0) for item in items)
        ready.set()
        if len(queue) <= cfg.send_queue_frames:
            return
        drained.clear()
        try:
            await asyncio.wait_for(drained.wait(), cfg.slow_client_wait_s)
            return
        except asyncio.TimeoutError:
            pass
        if cfg.slow_client == "close":
            raise Closed(4408, f"the client reads too slowly: {len(queue)} frames were waiting")
        while len(queue) > cfg.send_queue_frames and queue[0][0] is not _DONE:
            queue.popleft()
            dropped += 1
            svc.count("frames_dropped")

    read, send = asyncio.create_task(reader()), asyncio.create_task(sender())
    try:
        while not send.done():
            if not inbox and not state["end"] and state["error"] is None:
                await arrived.wait()
            arrived.clear()
            if state["error"] is not None:
                raise state["error"]
            if inbox:
                data, since = b"".join(inbox), state["since"]
                inbox.clear()
                state.update(since=None, bytes=0)
                room.set()
                try:
                    frames = await svc.run(live.push, data)
                except TalkgsError as e:
                    raise Closed(4000 + _status(e), str(e)) from None
                await enqueue(frames, since)
            elif state["end"]:
                await enqueue(await svc.run(live.close) + [_DONE], time.perf_counter())
                break
        await send  # the rest of the frames and ``done``; or the error that ended it (the client left)
    finally:
        for task in (read, send):
            if not task.done():
                task.cancel()


def _is_end(text: str | None) -> bool:
    try:
        return text is not None and json.loads(text).get("type") == "end"
    except (ValueError, AttributeError):
        return False


async def _close(ws, closed: Closed) -> None:
    """Tell the client why, and close; a client that does not read gets ``CLOSE_WAIT_S`` to take it."""
    async def tell() -> None:
        await ws.send_json({"type": "error", "message": closed.reason})
        await ws.close(code=closed.code, reason=closed.reason[:120])  # a close reason is at most 123 bytes

    try:
        await asyncio.wait_for(tell(), CLOSE_WAIT_S)
    except Exception:  # the client is gone, or reads nothing: the server lets go of the session anyway
        pass


async def _receive_upload(request, path: Path, limit_mb: float) -> Path:
    """The request body written to ``path``; refused past ``limit_mb`` (before reading it when its length says so)."""
    limit = int(limit_mb * 1e6)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the speech file is {int(declared) / 1e6:.1f} MB; this server takes at most {limit_mb:g} MB")
    size = 0
    with open(path, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the speech file is over {limit_mb:g} MB, this server's limit")
            f.write(chunk)
    if size == 0:
        raise TalkgsError("the request has no body: POST the speech file as the body")
    return path


def _render_job(model, speech: Path, out: Path, options: SessionOptions, svc: Service) -> None:
    from talkgs.render.driver import render_speech

    # A slot per batch of frames, not for the whole job: live sessions take their turns between the batches.
    render_speech(model, speech, out, options.drive_config(), svc.device, progress=False, guard=svc.slots,
                  max_audio_s=svc.cfg.max_audio_s)
