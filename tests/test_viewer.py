"""talkgs view: the camera maths, the HTTP server, and the page driven in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import cv2
import numpy as np
import pytest
from conftest import DEMO, ffmpeg

from talkgs.cli.main import main
from talkgs.errors import TalkgsError
from talkgs.viewer.camera import Orbit, orbit_viewmat, project
from talkgs.viewer.config import ViewerConfig
from talkgs.viewer.engine import FrameRequest
from talkgs.viewer.server import parse_range

# -- camera, requests, ranges (no subject needed) ------------------------------------------------------


def _view():
    w2c = np.eye(4)
    w2c[:3, 3] = [0.01, -0.02, 0.5]  # head 0.5 m in front of the camera
    K = np.array([[300.0, 0, 64], [0, 300.0, 64], [0, 0, 1]])
    return w2c, np.array([0.0, 0.0, 0.02]), K


def test_orbit_zero_is_the_tracked_view_and_zoom_keeps_the_head_centre():
    w2c, pivot, K = _view()
    assert np.allclose(orbit_viewmat(w2c, pivot, Orbit()), w2c)
    centre = project(pivot[None], w2c, K)[0][0]
    for orbit in (Orbit(zoom=2.0), Orbit(yaw=40, pitch=-20), Orbit(yaw=10, zoom=0.5)):
        uv, front = project(pivot[None], orbit_viewmat(w2c, pivot, orbit), K)
        assert front[0] and np.allclose(uv[0], centre, atol=1e-6)
    # Zoom 2 halves the distance to the head centre; a point beside it moves twice as far from it.
    side = pivot + [0.05, 0, 0]
    near = orbit_viewmat(w2c, pivot, Orbit(zoom=2.0))
    assert np.isclose((near @ np.append(pivot, 1))[2], (w2c @ np.append(pivot, 1))[2] / 2)
    off = project(side[None], w2c, K)[0][0] - centre
    assert np.allclose(project(side[None], near, K)[0][0] - centre, 2 * off, rtol=0.02)


def test_pan_moves_the_picture_by_focal_lengths_at_any_zoom():
    w2c, pivot, K = _view()
    centre = project(pivot[None], w2c, K)[0][0]
    for zoom in (1.0, 3.0):
        uv = project(pivot[None], orbit_viewmat(w2c, pivot, Orbit(zoom=zoom, pan_x=0.1, pan_y=-0.05)), K)[0][0]
        assert np.allclose(uv - centre, [0.1 * 300, -0.05 * 300], atol=1e-6)


def test_yaw_turns_the_head_about_the_vertical_axis():
    w2c, pivot, K = _view()
    m = orbit_viewmat(w2c, pivot, Orbit(yaw=90))
    # The camera-space offset of a point to the right of the head centre now points along the view axis.
    d = m[:3, :3] @ np.array([0.05, 0, 0])
    assert np.allclose(np.abs(d), [0, 0, 0.05], atol=1e-9)


def test_bad_frame_requests_and_cameras_are_refused():
    q = lambda **kw: {k: [str(v)] for k, v in kw.items()}  # noqa: E731
    req = FrameRequest.from_query(q(clip="u1", t=1.25, scale=0.5, layers="face,torso", centres=1, blink="none",
                                    cam=json.dumps({"yaw": 10, "zoom": 2})))
    assert req.orbit == Orbit(yaw=10, zoom=2) and req.layers == ("face", "torso") and req.centres
    for bad in (q(t="nan"), q(t=-1), q(layers="face,hair"), q(blink="sometimes"), q(cam="{not json"),
                q(cam=json.dumps({"roll": 3})), q(cam=json.dumps({"zoom": 0}))):
        with pytest.raises(TalkgsError):
            FrameRequest.from_query(bad)
    with pytest.raises(TalkgsError):
        ViewerConfig(blink="often")
    with pytest.raises(TalkgsError):
        ViewerConfig(port=70000)


def test_range_requests():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-", 100) == (0, 99)
    assert parse_range("bytes=10-19", 100) == (10, 19)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: the whole file
    with pytest.raises(ValueError):
        parse_range("bytes=100-", 100)


def test_importing_the_viewer_and_its_cli_stays_light():
    code = ("import sys, talkgs.viewer, talkgs.viewer.server, talkgs.cli.view; "
            "heavy = [m for m in ('torch', 'cv2', 'mediapipe') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the server, on the fitted tiny subject ------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer(fitted):
    """(server, base URL) of a viewer of the fitted tiny subject, serving from a thread."""
    from talkgs.viewer.engine import ViewerEngine
    from talkgs.viewer.server import ViewerServer

    cfg = ViewerConfig(port=0, device="cpu")
    server = ViewerServer(cfg)
    server.engine = ViewerEngine(fitted[0], cfg)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server, server.url
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def speech(clip_dir):
    """3 s of the demo's speech as 44.1 kHz stereo MP3 (what a user might upload)."""
    path = clip_dir / "viewer_speech.mp3"
    if not path.exists():
        ffmpeg("-ss", "6", "-t", "3", "-i", str(DEMO), "-vn", "-ac", "2", "-ar", "44100", str(path))
    return path


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post(url: str, data: bytes, name: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"X-Filename": name})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _decode(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_frames_are_the_renderers_for_the_audio_time(viewer):
    server, url = viewer
    engine = server.engine
    info = json.loads(_get(url + "info")[2])
    own = info["clips"][0]
    assert own["id"] == "own" and info["size"] == 64 and info["device"] == "cpu"
    r = engine.renderer
    bodies = {}
    for t in (0.0, 0.5, 1.03):
        status, headers, body = _get(f"{url}frame?clip=own&t={t}")
        index = math.floor(t * 25)
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and int(headers["X-Frame"]) == index
        with engine._lock:  # the renderer's tracked view, as talkgs render draws it
            r.track = engine._track("natural")
            expected = r.render_batch(engine.clips["own"].features, np.array([index]))[0]
        got = _decode(body)
        bodies[t] = body
        # JPEG at quality 90 on a 64 px frame: a mean error near 1 grey level.
        assert got.shape == expected.shape and np.abs(got.astype(int) - expected.astype(int)).mean() < 3
    # The deformation of a frame is cached for camera moves: turning away and back gives the same frame.
    assert _decode(_get(f"{url}frame?clip=own&t=0.5&cam=" + quote(json.dumps({"yaw": 30})))[2]).shape == (64, 64, 3)
    assert _get(f"{url}frame?clip=own&t=0.5")[2] == bodies[0.5]
    # Past the end of the clip: its last frame; the resolution scale; the centres overlay; the layers.
    assert int(_get(f"{url}frame?clip=own&t=99")[1]["X-Frame"]) == own["frames"] - 1
    assert _decode(_get(f"{url}frame?clip=own&t=0.5&scale=0.5")[2]).shape == (32, 32, 3)
    plain = _decode(_get(f"{url}frame?clip=own&t=0.5")[2])
    dots = _decode(_get(f"{url}frame?clip=own&t=0.5&centres=1")[2]).astype(int)
    assert dots.shape == (256, 256, 3)  # enlarged so that the dots stay small on the page
    plain = cv2.resize(plain, (256, 256), interpolation=cv2.INTER_LINEAR).astype(int)
    assert 0.02 < (np.abs(dots - plain).sum(-1) > 100).mean() < 0.5
    head_only = _decode(_get(f"{url}frame?clip=own&t=0.5&layers=face,mouth")[2])
    assert head_only[:4, :4].max() < 20  # no background plate: black corners
    assert _get(f"{url}frame?clip=nope&t=0")[0] == 400 and _get(f"{url}frame?t=x")[0] == 400


def test_a_miss_deforms_the_frames_ahead_in_one_batch(viewer):
    """A frame not cached yet is deformed with the next ``deform_ahead`` frames (what a playing tab asks for next);
    each cached frame equals the frame deformed alone."""
    import torch

    engine = viewer[0].engine
    clip, ahead = engine.clips["own"], engine.cfg.deform_ahead
    assert clip.num_frames > 10 + ahead
    with engine._lock, torch.no_grad():
        engine._deform_cache.clear()
        assert engine._deformed(clip, 10, "natural").num_frames == 1
        assert sorted(k[1] for k in engine._deform_cache) == list(range(10, 10 + ahead))
        got = engine._deformed(clip, 13, "natural")
        lone = engine.renderer.deform(clip.features, np.array([13]), track=engine._track("natural"))
    assert len(engine._deform_cache) == ahead  # a hit deforms nothing
    for branch in ("face", "mouth"):
        for k, v in getattr(lone, branch).items():
            torch.testing.assert_close(getattr(got, branch)[k], v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.face_deltas.d_means, lone.face_deltas.d_means, rtol=1e-5, atol=1e-6)


def test_audio_is_served_as_wav_with_ranges(viewer):
    server, url = viewer
    status, headers, wav = _get(url + "audio/own")
    assert status == 200 and headers["Accept-Ranges"] == "bytes" and wav[:4] == b"RIFF"
    clip = server.engine.clips["own"]
    assert len(wav) == 44 + 2 * len(clip.samples)
    status, headers, part = _get(url + "audio/own", {"Range": "bytes=1000-1999"})
    assert status == 206 and part == wav[1000:2000] and headers["Content-Range"] == f"bytes 1000-1999/{len(wav)}"
    assert _get(url + "audio/own", {"Range": f"bytes={len(wav)}-"})[0] == 416


def test_uploads_are_checked_and_the_server_goes_on(viewer, speech, tmp_path):
    server, url = viewer
    status, clip = _post(url + "upload", speech.read_bytes(), "speech.mp3")
    assert status == 200 and clip["frames"] == 75 and abs(clip["duration"] - 3.0) < 0.05
    status, body = _post(url + "upload", b"these are my notes, not audio\n" * 20, "notes.txt")
    assert status == 400 and "notes.txt" in body["error"] and "/tmp" not in body["error"]
    silent = tmp_path / "silent.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1", str(silent))
    status, body = _post(url + "upload", silent.read_bytes(), "silent.wav")
    assert status == 400 and "silent" in body["error"]
    limit = server.cfg.max_upload_mb
    server.cfg.max_upload_mb = 0.01  # the same check as 50 MB, with a small body
    try:
        status, body = _post(url + "upload", b"\0" * 20000, "big.wav")
    finally:
        server.cfg.max_upload_mb = limit
    assert status == 413 and "at most" in body["error"]
    assert _get(f"{url}frame?clip={clip['id']}&t=1.0")[0] == 200


def test_tabs_share_the_renderer_without_stalling_one(viewer):
    """Three tabs asking for frames back to back, as fast as they can: each gets its share."""
    _, url = viewer
    counts, errors, info_ms = [0, 0, 0], [], []
    stop = time.monotonic() + 4.0

    def tab(k: int) -> None:
        while time.monotonic() < stop:
            status = _get(f"{url}frame?clip=own&t={(counts[k] % 40) / 25:.2f}&blink={('natural', 'none', 'auto')[k]}"
                          )[0]
            if status != 200:
                errors.append(status)
            counts[k] += 1

    threads = [threading.Thread(target=tab, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    while time.monotonic() < stop:  # the page's other requests are answered while frames render
        t0 = time.monotonic()
        assert _get(url + "info")[0] == 200
        info_ms.append(1000 * (time.monotonic() - t0))
        time.sleep(0.2)
    for th in threads:
        th.join()
    assert not errors and min(counts) >= 3
    # The render lock is granted in arrival order: no tab gets less than half another's frames.
    assert min(counts) >= 0.5 * max(counts), counts
    assert max(info_ms) < 1500, info_ms


# -- the CLI's errors ----------------------------------------------------------------------------------


def test_view_refuses_a_subject_that_is_not_fitted(demo_subject, capsys):
    assert main(["view", str(demo_subject[0]), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not fitted yet" in err[0]


def test_view_refuses_a_port_in_use(fitted, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        assert main(["view", str(fitted[0]), "--port", str(port)]) == 2
        assert time.monotonic() - t0 < 5  # refused before the subject loads
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"port {port}" in err[0] and "already in use" in err[0]


# -- the page in headless Chromium ---------------------------------------------------------------------


def _chromium():
    """A headless Chromium driven by Selenium, or skip with the reason."""
    from talkgs.viewer.browser import BrowserUnavailable, headless_chromium

    try:
        return headless_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))


def _wait(driver, script: str, timeout: float = 30.0, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    state = driver.execute_script("return [document.getElementById('msg').textContent, "
                                  "JSON.stringify(viewer.stats), audio.currentTime, audio.paused]")
    raise AssertionError(f"timed out waiting for {what or script}; page: {state}")


_GRAB = ("return {png: document.getElementById('view').toDataURL('image/png'), frame: viewer.stats.lastFrame, "
         "t: viewer.stats.lastT, size: viewer.stats.lastSize, time: audio.currentTime, shown: viewer.stats.shown}")


def _pixels(grab: dict) -> np.ndarray:
    png = base64.b64decode(grab["png"].split(",", 1)[1])
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_page_plays_uploaded_speech_in_sync(viewer, speech, tmp_path):
    server, url = viewer
    engine = server.engine
    driver = _chromium()
    try:
        driver.get(url)
        _wait(driver, "return viewer.stats.shown > 0", what="the first frame")
        # Upload through the page's file input, as a user does.
        driver.find_element("id", "file").send_keys(str(speech))
        clip = _wait(driver, "return document.getElementById('msg').textContent.startsWith('loaded') && "
                             "viewer.state.clip", what="the upload")
        assert clip.startswith("u")
        _wait(driver, "return audio.readyState >= 3 && Math.abs(audio.duration - 3) < 0.05", what="the audio")
        driver.execute_script("audio.play()")
        grabs, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline and (len(grabs) < 6 or grabs[-1]["time"] < 2.0):
            grab = driver.execute_script(_GRAB)
            if grab["frame"] is not None and grab["t"] > 0 and (not grabs or grab["shown"] > grabs[-1]["shown"]):
                grabs.append(grab)
            if len(grabs) == 3:
                driver.save_screenshot(str(tmp_path / "viewer_playing.png"))
            time.sleep(0.25)
        stats = driver.execute_script("return viewer.stats")
        readouts = driver.execute_script("return [document.getElementById('fps').textContent, "
                                         "document.getElementById('latency').textContent]")
        assert len(grabs) >= 4, grabs
        # The audio clock advances and the page follows it: frame = floor(t * fps) of the requested time.
        times = [g["time"] for g in grabs]
        assert times[-1] - times[0] > 1.0 and all(b >= a for a, b in zip(times, times[1:]))
        assert all(g["frame"] == min(math.floor(g["t"] * 25 + 1e-6), 74) for g in grabs)
        # The picture is the rendered face for that time (a JPEG of the renderer's frame) ...
        for g in grabs[:3]:
            shown = _pixels(g)
            expected = engine.render_image(FrameRequest(clip=clip, t=g["frame"] / 25))[0]
            assert shown.shape == expected.shape and shown.std() > 20
            assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 3
        # ... and it changes while the audio plays.
        distinct = {g["frame"] for g in grabs}
        assert len(distinct) >= 4
        first, last = _pixels(grabs[0]).astype(int), _pixels(grabs[-1]).astype(int)
        assert np.abs(first - last).mean() > 0.5
        # Read-outs: frames per second, and the latency of frames behind the audio (bounded).
        assert stats["shown"] >= 5 and 0 <= stats["latencyMs"] < 2000
        assert readouts[0].isdigit() and readouts[1].endswith("ms")

        # Pause and seek: the frame of the new time is shown.
        driver.execute_script("audio.pause(); audio.currentTime = 0.5;")
        _wait(driver, "return audio.paused && viewer.stats.lastFrame === 12 && Math.abs(viewer.stats.lastT - 0.5)"
                      " < 1e-3", what="the frame after seeking")

        # Orbit: a drag turns the head, renders at reduced resolution while moving, full when still.
        from selenium.webdriver.common.action_chains import ActionChains

        before = _pixels(driver.execute_script(_GRAB)).astype(int)
        low = driver.execute_script("return viewer.stats.lowResShown")
        canvas = driver.find_element("id", "view")
        ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(60, 10).pause(0.3)\
            .move_by_offset(40, 0).release().perform()
        _wait(driver, f"return viewer.stats.lowResShown > {low} && !viewer.state.lowRes && "
                      "viewer.stats.lastSize === 64", what="the full-resolution frame after the drag")
        cam = driver.execute_script("return viewer.state.cam")
        assert cam["yaw"] < -10
        turned = _pixels(driver.execute_script(_GRAB)).astype(int)
        assert np.abs(turned - before).mean() > 2
        driver.find_element("id", "centres").click()
        driver.find_element("id", "reset").click()
        _wait(driver, "return viewer.state.cam.yaw === 0 && !viewer.state.dirty", what="the reset")
        time.sleep(0.5)
        driver.save_screenshot(str(tmp_path / "viewer_centres.png"))
    finally:
        driver.quit()


def test_page_shows_a_bad_upload_and_the_server_goes_on(viewer, tmp_path):
    _, url = viewer
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n" * 100)
    driver = _chromium()
    try:
        driver.get(url)
        _wait(driver, "return viewer.stats.shown > 0", what="the first frame")
        driver.find_element("id", "file").send_keys(str(notes))
        text = _wait(driver, "const m = document.getElementById('msg'); "
                             "return m.className === 'error' && m.textContent", what="the error message")
        assert "notes.txt" in text and ("could not decode" in text or "no audio" in text)
        # Still serving: the page gets new frames after the error.
        shown = driver.execute_script("return viewer.stats.shown")
        driver.execute_script("audio.currentTime = 1.0")
        _wait(driver, f"return viewer.stats.shown > {shown} && viewer.stats.lastFrame === 25", what="a new frame")
    finally:
        driver.quit()
    assert _get(url + "info")[0] == 200
