"""talkgs serve, embedded: live sessions over WebSocket, render jobs over HTTP, limits, faults and the token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import DEMO, stream_in_chunks

pytest.importorskip("fastapi", reason="talkgs serve needs the serve extra (pip install 'talkgs[serve]')")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from talkgs.cli.main import main  # noqa: E402
from talkgs.errors import TalkgsError  # noqa: E402
from talkgs.render.driver import TalkingRenderer  # noqa: E402
from talkgs.serve.config import ServeConfig  # noqa: E402
from talkgs.serve.models import ModelCatalog  # noqa: E402
from talkgs.serve.server import EmbeddedServer  # noqa: E402
from talkgs.serve.session import FRAME_HEADER, decode_frame, pcm16_to_float  # noqa: E402
from talkgs.utils import media  # noqa: E402

CHUNK = 1600  # 0.1 s of 16 kHz speech per message


@pytest.fixture(scope="module")
def server(fitted):
    # late_frames keep: a frame-for-frame comparison must not depend on how busy the machine is.
    srv = EmbeddedServer([fitted[0]], ServeConfig(port=0, late_frames="keep")).start()
    yield srv
    srv.stop()


def ws_url(srv, path: str = "/session") -> str:
    return srv.url.replace("http://", "ws://") + path


def run_session(url: str, options: dict, pcm: bytes, chunk: int = CHUNK, headers=None) -> tuple[dict, list, dict]:
    """(ready, frames as (index, time, image), done) of one session that sends ``pcm`` in chunks, then ends."""
    with connect(url, max_size=None, additional_headers=headers) as ws:
        ws.send(json.dumps(options))
        ready = json.loads(ws.recv())
        assert ready["type"] == "ready", ready
        for a in range(0, len(pcm), 2 * chunk):
            ws.send(pcm[a:a + 2 * chunk])
        messages = [ws.recv(timeout=60)]  # frames come while the speech goes on, not only after its end
        assert isinstance(messages[0], bytes)
        ws.send(json.dumps({"type": "end"}))
        while isinstance(messages[-1], bytes):
            messages.append(ws.recv())
        frames = [decode_frame(m, options.get("format", "jpeg"), ready["size"]) for m in messages[:-1]]
        return ready, frames, json.loads(messages[-1])


def refused(url: str, first, pcm: bytes = b"") -> tuple[int, str]:
    """(close code, error message) of a session the server ends early (``pcm`` is sent once it is ready)."""
    messages = []
    try:
        with connect(url, max_size=None) as ws:
            try:
                ws.send(first if isinstance(first, str) else json.dumps(first))
            except ConnectionClosed:  # refused before it read anything (a full server)
                pass
            while True:
                messages.append(json.loads(ws.recv()))
                if messages[-1]["type"] == "ready":
                    ws.send(pcm)
    except ConnectionClosed as closed:
        assert messages[-1]["type"] == "error"
        return closed.rcvd.code, messages[-1]["message"]


def http(srv, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(srv.url + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_session_frames_are_the_stream_frames(server, fitted, pcm):
    """Decoded PNG and raw frames equal ``renderer.stream()``'s bit for bit; JPEG is close; times are i / fps."""
    status, body = http(server, "/models")
    assert status == 200 and [m["name"] for m in json.loads(body)["models"]] == [fitted[0].name]
    renderer = TalkingRenderer(fitted[0], device="cpu")
    samples = pcm16_to_float(pcm)
    expected = stream_in_chunks(renderer.stream(), samples, CHUNK)
    for fmt in ("png", "raw"):
        ready, frames, done = run_session(ws_url(server), {"model": fitted[0].name, "format": fmt}, pcm)
        assert ready["size"] == renderer.size and ready["fps"] == renderer.fps and ready["sample_rate"] == 16000
        assert done == {"type": "done", "frames": len(expected), "dropped": 0, "skipped": 0}
        assert [i for i, _, _ in frames] == list(range(len(expected)))
        assert all(t == pytest.approx(i / renderer.fps) for i, t, _ in frames)
        assert all(np.array_equal(image, want) for (_, _, image), want in zip(frames, expected))
    _, frames, _ = run_session(ws_url(server), {"model": fitted[0].name, "format": "jpeg", "blink": "none"}, pcm)
    assert len(frames) == len(expected)
    metrics = json.loads(http(server, "/metrics")[1])
    assert metrics["frames_sent"] >= 3 * len(expected) and metrics["latency_ms"]["p50"] > 0
    assert metrics["models_loaded"] == [fitted[0].name] and metrics["sessions_open"] == 0


def test_job_returns_the_bytes_talkgs_render_writes(server, fitted, speech, tmp_path):
    out = tmp_path / "cli.mp4"
    assert main(["--quiet", "render", str(fitted[0]), "--audio", str(speech), "-o", str(out), "--pose", "static"]) == 0
    status, body = http(server, f"/render?model={fitted[0].name}&pose=static", speech.read_bytes())
    assert status == 200 and body == out.read_bytes()


def test_bad_input_gets_one_clear_answer(fitted, speech, tmp_path):
    cfg = ServeConfig(port=0, max_sessions=1, max_upload_mb=0.01, max_chunk_s=0.5, tmp_dir=str(tmp_path))
    srv = EmbeddedServer([fitted[0]], cfg).start()
    try:
        name, url = fitted[0].name, ws_url(srv)
        code, message = refused(url, {"model": "../../etc/passwd"})  # a name, never a path
        assert code == 4404 and message.startswith("unknown model")
        code, message = refused(url, {"model": "nobody"})
        assert code == 4404 and "unknown model 'nobody'" in message and name in message
        assert refused(url, "not json")[0] == 4400
        code, message = refused(url, {"model": name, "background": "/etc/hosts"})
        assert code == 4400 and "colour" in message
        assert refused(url, {"model": name, "size": "big"})[0] == 4400
        assert refused(url, {"model": name, "format": "gif"})[0] == 4400
        assert refused(url, {"model": name}, b"\x00" * 3)[0] == 4400  # an odd byte count is not PCM16
        code, message = refused(url, {"model": name}, b"\x00" * 32000)  # 1 s > max_chunk_s
        assert code == 4413 and "longer than" in message
        with connect(url) as first:  # the one session this server takes
            first.send(json.dumps({"model": name}))
            json.loads(first.recv())
            code, message = refused(url, {"model": name})
            assert code == 4503 and "full" in message
        # Jobs: unknown model 404, bad speech 400, too big 413; nothing is left in the job folder.
        silent = tmp_path / "silent.wav"
        media.write_wav(silent, np.zeros(1600, np.float32), 16000)
        assert http(srv, "/render?model=nobody", b"x")[0] == 404
        status, body = http(srv, f"/render?model={name}", silent.read_bytes())
        assert status == 400 and "silent" in json.loads(body)["error"]
        status, body = http(srv, f"/render?model={name}", b"not audio at all")
        assert status == 400 and json.loads(body)["error"]
        status, body = http(srv, f"/render?model={name}", speech.read_bytes())  # 50 kB > 10 kB
        assert status == 413 and "MB" in json.loads(body)["error"]
        assert http(srv, f"/render?model={name}&pose=/tmp/poses.npy", b"x")[0] == 400
        short = tmp_path / "short.wav"  # 0.3 s: within the 10-kB limit
        media.write_wav(short, media.read_audio(speech, 16000)[:4800], 16000)
        status, body = http(srv, f"/render?model={name}", short.read_bytes())
        assert status == 200 and body[4:8] == b"ftyp"
        time.sleep(0.5)  # the job's folder goes once the answer is sent
        assert sorted(tmp_path.iterdir()) == sorted([silent, short])
        assert json.loads(http(srv, "/metrics")[1])["jobs_failed"] == 5
    finally:
        srv.stop()


@pytest.mark.parametrize("policy", ["drop", "close"])
def test_a_client_that_does_not_read_is_bounded(fitted, policy):
    """A client that stops reading: past the queue, the oldest frames are dropped (counted) or the session closes."""
    import threading

    cfg = ServeConfig(port=0, send_queue_frames=4, slow_client=policy, slow_client_wait_s=0.5, late_frames="keep")
    srv = EmbeddedServer([fitted[0]], cfg).start()
    samples = media.read_audio(DEMO, 16000)[:16000 * 8]
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    messages, code = [], None
    try:
        # max_queue=1: the client's socket stops being read while the test does not call recv, so the server's
        # sends block once the kernel's buffers (a few MB) are full, as with a client on a slow link.
        with connect(ws_url(srv), max_size=None, max_queue=1) as ws:
            ws.send(json.dumps({"model": fitted[0].name, "format": "raw", "size": 256}))
            ready = json.loads(ws.recv())

            def speak() -> None:
                try:
                    for a in range(0, len(pcm), 8000):
                        ws.send(pcm[a:a + 8000])
                    ws.send(json.dumps({"type": "end"}))
                except ConnectionClosed:
                    pass

            speaker = threading.Thread(target=speak)
            speaker.start()
            time.sleep(6.0)  # reads nothing meanwhile
            try:
                while not messages or isinstance(messages[-1], bytes):
                    messages.append(ws.recv(timeout=60))
                ws.recv(timeout=60)
            except ConnectionClosed as closed:
                code = closed.rcvd.code
            speaker.join(timeout=60)
        metrics = json.loads(http(srv, "/metrics")[1])
    finally:
        srv.stop()
    frames = [FRAME_HEADER.unpack_from(m)[0] for m in messages if isinstance(m, bytes)]
    assert all(len(m) == FRAME_HEADER.size + ready["size"] ** 2 * 3 for m in messages[:-1])
    assert frames == sorted(frames) and frames[0] == 0
    last = json.loads(messages[-1])
    if policy == "close":
        assert code == 4408 and last["type"] == "error" and "too slowly" in last["message"]
        return
    assert last["type"] == "done" and last["dropped"] > 0 and metrics["frames_dropped"] == last["dropped"]
    assert len(frames) + last["dropped"] == last["frames"] == 200 and frames[-1] == 199  # it sees the present


def test_a_session_behind_real_time_skips_late_frames(fitted, pcm):
    """Frames already past due (an overloaded server) are not rendered: the session jumps to the present and the
    frames it does send are the stream's frames of the same index."""
    from talkgs.model.fitted import load_model
    from talkgs.serve.session import LiveSession, SessionOptions

    model = load_model(fitted[0])
    options = SessionOptions.parse({"model": "demo", "format": "raw"})
    half = len(pcm) // 4 * 2
    samples = pcm16_to_float(pcm)
    expected = stream_in_chunks(TalkingRenderer(model, device="cpu").stream(), samples, half // 2)
    for policy in ("skip", "keep"):
        live = LiveSession(model, options, ServeConfig(late_frames=policy, late_after_s=0.5), device="cpu")
        got = live.push(pcm[:half], now=0.0)  # on time: the first chunk sets the clock
        # The rest arrives 3 s later, 1.35 s late (the server was busy): frames due before 3 - 0.8 - 0.5 s, the
        # 42 first, are skipped but for those the first chunk rendered.
        got += live.push(pcm[half:], now=3.0) + live.close(now=3.0)
        indices = [i for i, _ in got]
        assert live.frames == len(expected) and indices == sorted(set(indices))
        assert all(np.array_equal(frame, expected[i]) for i, frame in got)
        late = int((3.0 - live.stream.latency_ms / 1000 - 0.5) * live.fps)
        if policy == "skip":
            assert live.skipped > 0 and len(got) + live.skipped == len(expected)
            assert set(range(late)) - set(indices) and all(i in indices for i in range(late, len(expected)))
        else:
            assert live.skipped == 0 and indices == list(range(len(expected)))
        live.release()


def test_token_and_exposure(fitted, capsys, monkeypatch):
    monkeypatch.delenv("TALKGS_SERVE_TOKEN", raising=False)
    assert main(["serve", str(fitted[0]), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token" in err and len(err.splitlines()) == 1
    with pytest.raises(TalkgsError, match="16 characters"):
        ServeConfig(token="short")
    token = "a-long-enough-test-token"
    srv = EmbeddedServer([fitted[0]], ServeConfig(port=0, token=token)).start()
    try:
        assert http(srv, "/models")[0] == 401
        assert http(srv, "/models", headers={"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
        assert http(srv, "/models", headers={"Authorization": f"Bearer {token}"})[0] == 200
        with pytest.raises(InvalidStatus):
            connect(ws_url(srv))
        with connect(ws_url(srv, f"/session?token={token}")) as ws:
            ws.send(json.dumps({"model": fitted[0].name}))
            assert json.loads(ws.recv())["type"] == "ready"
    finally:
        srv.stop()


def test_catalog_names_models_and_refuses_clashes(fitted, fitted_direct, tmp_path):
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(fitted[0] / "fit" / "model.safetensors", folder / "anna.safetensors")
    (folder / "notes.txt").write_text("not a model")
    catalog = ModelCatalog([folder, fitted_direct[0] / "fit" / "model.safetensors"])
    assert sorted(catalog.entries) == sorted(["anna", fitted_direct[0].name])
    assert catalog["anna"].info()["drive"] in ("code", "audio")
    with pytest.raises(TalkgsError, match="unknown model"):
        catalog["../anna"]
    (folder / f"{fitted_direct[0].name}.safetensors").write_bytes((folder / "anna.safetensors").read_bytes())
    with pytest.raises(TalkgsError, match="two models are named"):
        ModelCatalog([folder, fitted_direct[0]])
    with pytest.raises(TalkgsError, match="holds no fitted model"):
        ModelCatalog([tmp_path / "models" / ".." / "models" / ".." ])
    (folder / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(TalkgsError, match="damaged"):
        ModelCatalog([folder])
