"""talkgs serve on Ray Serve and batch jobs as Ray tasks, on a local Ray cluster the tests start on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import stream_in_chunks

ray = pytest.importorskip("ray", reason="the Ray tests need the serve extra (pip install 'talkgs[serve]')")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from talkgs.cli.main import main  # noqa: E402
from talkgs.render.driver import TalkingRenderer  # noqa: E402
from talkgs.serve import batch  # noqa: E402
from talkgs.serve.config import RayConfig, ServeConfig  # noqa: E402
from talkgs.serve.server import serve_on_ray, stop_ray  # noqa: E402
from talkgs.serve.session import decode_frame, pcm16_to_float  # noqa: E402
from talkgs.utils import media  # noqa: E402

CHUNK = 1600


@pytest.fixture(scope="module")
def cluster() -> int:
    """A local Ray cluster on 2 CPUs and 127.0.0.1; the port Serve's proxy listens on (one per cluster: every
    deployment of the module uses it)."""
    import socket

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port
    stop_ray()


def session(url: str, model: str, pcm: bytes) -> tuple[dict, list, dict]:
    frames = []
    with connect(url.replace("http://", "ws://") + "/session", max_size=None,
                 additional_headers={"serve_multiplexed_model_id": model}) as ws:
        ws.send(json.dumps({"model": model, "format": "png"}))
        ready = json.loads(ws.recv())
        for a in range(0, len(pcm), 2 * CHUNK):
            ws.send(pcm[a:a + 2 * CHUNK])
        ws.send(json.dumps({"type": "end"}))
        while isinstance(message := ws.recv(), bytes):
            frames.append(decode_frame(message, "png", ready["size"])[2])
    return ready, frames, json.loads(message)


@pytest.fixture(scope="module")
def models(fitted, fitted_direct, tmp_path_factory) -> Path:
    """A folder of two models: ``code`` (the default mouth-code path) and ``direct`` (audio nets on log-mel)."""
    folder = tmp_path_factory.mktemp("served")
    shutil.copy(fitted[0] / "fit" / "model.safetensors", folder / "code.safetensors")
    shutil.copy(fitted_direct[0] / "fit" / "model.safetensors", folder / "direct.safetensors")
    return folder


def test_two_models_multiplexed_on_one_replica(cluster, models, pcm):
    """One replica holds both models (``serve.multiplexed``); each session's frames are ``stream()``'s."""
    cfg = ServeConfig(port=cluster, ray=RayConfig(min_replicas=1, max_replicas=1, models_per_replica=2))
    url = serve_on_ray([models], cfg)
    listed = json.loads(urllib.request.urlopen(url + "/models").read())["models"]
    assert [m["name"] for m in listed] == ["code", "direct"] and [m["drive"] for m in listed] == ["code", "audio"]
    replicas = set()
    for name in ("code", "direct"):
        renderer = TalkingRenderer(models / f"{name}.safetensors", device="cpu")
        expected = stream_in_chunks(renderer.stream(), pcm16_to_float(pcm), CHUNK)
        ready, frames, done = session(url, name, pcm)
        replicas.add(ready["replica"])
        assert done["frames"] == len(expected) == len(frames) and done["dropped"] == 0
        assert all(np.array_equal(a, b) for a, b in zip(frames, expected))
    metrics = json.loads(urllib.request.urlopen(url + "/metrics").read())
    assert len(replicas) == 1 and metrics["replica"] in replicas
    assert metrics["models_loaded"] == ["code", "direct"]


def _replica_actor(replica: str):
    """The Ray actor of the Serve replica whose id ``/healthz`` and ``ready`` name ("ray replica ID")."""
    rid = replica.split()[-1]
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if rid in actor["name"]:
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no actor for {replica}")


def test_a_killed_replica_closes_its_session_only(cluster, models, pcm):
    """Two replicas; the one serving session A is killed mid-session: A's client sees the connection close, B's
    session on the other replica goes on to its last frame."""
    cfg = ServeConfig(port=cluster, ray=RayConfig(min_replicas=2, max_replicas=2, replica_cpus=0.5))
    url = serve_on_ray([models], cfg)
    ws_url = url.replace("http://", "ws://") + "/session"
    opened = []
    with contextlib.ExitStack() as stack:
        for _ in range(8):  # Ray routes each new session to the less busy of two replicas it picks
            ws = stack.enter_context(connect(ws_url, max_size=None))
            ws.send(json.dumps({"model": "code", "format": "png"}))
            opened.append((ws, json.loads(ws.recv())))
            if len({ready["replica"] for _, ready in opened}) == 2:
                break
        a, ready_a = opened[0]
        b, ready_b = next((w, r) for w, r in opened if r["replica"] != ready_a["replica"])
        half = len(pcm) // 2 // 2 * 2
        for ws in (a, b):
            ws.send(pcm[:half])
        assert isinstance(a.recv(timeout=60), bytes) and isinstance(b.recv(timeout=60), bytes)
        ray.kill(_replica_actor(ready_a["replica"]), no_restart=False)
        killed = time.monotonic()
        # Ray's proxy drops the client's connection when its replica dies (no close frame: 1006, abnormal).
        with pytest.raises(ConnectionClosed):
            for _ in range(1000):
                a.recv(timeout=60)
        assert time.monotonic() - killed < 10
        b.send(pcm[half:])
        b.send(json.dumps({"type": "end"}))
        frames = 1
        while isinstance(message := b.recv(timeout=60), bytes):
            frames += 1
        done = json.loads(message)
        assert done["type"] == "done" and frames == done["frames"] == round(len(pcm) / 2 / 16000 * 25)


def _kill_worker_once(marker: str, stop: threading.Event, killed: list) -> None:
    """Kill -9 the process whose child's command line contains ``marker`` (a Ray worker and its video encoder)."""
    while not stop.is_set() and not killed:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if marker in cmdline and "ffmpeg" in cmdline:
                    status = Path(f"/proc/{pid}/status").read_text()
                    parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid")))
                    os.kill(parent, signal.SIGKILL)
                    killed.append(parent)
                    return
            except (OSError, StopIteration):
                continue
        time.sleep(0.02)


def test_manifest_runs_on_ray_and_locally_with_the_same_outputs(cluster, models, speech, tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    media.write_wav(silent, np.zeros(16000, np.float32), 16000)
    rows = ["model,speech,out,options",
            f"{models / 'code.safetensors'},{speech},a.mp4,pose=static;blink=none",
            f"{models / 'direct.safetensors'},{speech},b.mp4,",
            f"{models / 'code.safetensors'},{silent},c.mp4,"]
    outputs = {}
    for where in ("local", "ray"):
        folder = tmp_path / where
        folder.mkdir()
        (folder / "jobs.csv").write_text("\n".join(rows) + "\n")
        if where == "local":
            assert main(["--quiet", "render", "--manifest", str(folder / "jobs.csv")]) == 1
            err = capsys.readouterr().err
            assert "line 4" in err and "silent" in err
        else:
            # The worker of job a is killed once mid-render: Ray runs it again, and its output is whole.
            stop, killed = threading.Event(), []
            killer = threading.Thread(target=_kill_worker_once, args=(".a.mp4.tmp.mp4", stop, killed))
            killer.start()
            try:
                outcomes = batch.run_on_ray(batch.read_manifest(folder / "jobs.csv"))
            finally:
                stop.set()
                killer.join()
            assert killed, "the job's worker was never seen rendering"
            assert [o.status for o in outcomes] == ["done", "done", "failed"] and "silent" in outcomes[2].reason
        outputs[where] = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".mp4"}
        assert sorted(outputs[where]) == ["a.mp4", "b.mp4"]
        assert sorted(p.name for p in folder.iterdir()) == ["a.mp4", "b.mp4", "jobs.csv"]  # nothing half-written
    assert outputs["local"] == outputs["ray"]
    # Run again: existing outputs are skipped, not rendered over.
    capsys.readouterr()
    assert main(["render", "--manifest", str(tmp_path / "local" / "jobs.csv")]) == 1
    assert "0 done, 2 skipped (output exists), 1 failed" in capsys.readouterr().err
