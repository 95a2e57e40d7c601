"""How many live 256-px sessions ``talkgs serve`` holds in real time on this machine, embedded and on Ray (issue 30).

    python tools/bench_serve.py MODEL_A MODEL_B [--sessions 1,2,3,4] [--seconds 12] [--modes embedded,ray]
        [--size 256] [--allowance 0.5] [--json docs/benchmarks/serve.json]

For each mode and each N, a fresh ``talkgs serve MODEL_A MODEL_B --port P`` (``--ray``: a local cluster, with
``--replicas`` replicas of ``--replica-cpus`` CPUs each; default one replica with both cores, since Ray gives an
actor of one CPU one OpenMP thread and a 256-px session needs more than a core) runs as its own process, its
models loaded (one warm-up session each, not timed). Then N clients, alternating between the two models, open
sessions at the same moment and speak ``--seconds`` of real speech in 0.1-s PCM16 chunks, paced at real time like a
microphone, while a thread per client receives the JPEG frames. Per N:

- **real time**: frame i is on time when it arrives before the session's start + i / fps + the stream's latency
  (``latency_ms`` of the ready message: the audio encoders' look-ahead, the audio net's right context and one
  feature block: the audio the frame waits for) + ``--allowance`` (0.5 s: the client's 0.1-s chunking and the
  compute of one block of frames, which the stream's figure leaves out). ``held`` means every frame of every
  session was rendered and on time. Past what the machine renders in real time the server skips frames already
  too late (``ServeConfig.late_frames``): ``in_sync`` says every frame sent was on time, ``fps_per_session`` how
  many a second each session got;
- chunk-to-frame latency percentiles from the server's ``/metrics`` (from the chunk that completed a frame
  arriving to that frame's message being sent), and the client's lateness percentiles;
- CPU: the server processes' CPU time during the sessions per frame sent (Ray: replicas and HTTP proxy apart; the
  proxy's share is Ray's overhead per frame);
- memory: the server's resident memory (Ray: the replicas' and the proxy's summed) with no model, with the two
  models loaded, and at the end of the N sessions: per model and per session.

Loopback only; each server is stopped before the next starts. The speech is ``assets/``'s demo clip's (public
domain).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from talkgs.serve.session import FRAME_HEADER

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "assets" / "obama2010_pd_en_20s_256.mp4"
CHUNK_S = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    """CPU time (user + system, seconds) the processes used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def server_pids(proc: subprocess.Popen, mode: str, kind: str = "") -> list[int]:
    """The processes that serve: the embedded server, or Ray's replicas and HTTP proxy (``kind``: "ServeReplica"
    or "ProxyActor" alone)."""
    if mode == "embedded":
        return [proc.pid]
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if name.startswith(tuple(f"ray::{k}" for k in ([kind] if kind else ["ServeReplica", "ProxyActor"]))):
            pids.append(int(pid))
    return pids


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def start_server(models: list[str], mode: str, port: int, workdir: Path, replicas: int = 1,
                 replica_cpus: float = 2.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "talkgs.cli.main", "--quiet", "serve", *models, "--port", str(port)]
    if mode == "ray":
        config = workdir / "serve.yaml"
        config.write_text(f"serve:\n  ray:\n    min_replicas: {replicas}\n    max_replicas: {replicas}\n"
                          f"    replica_cpus: {replica_cpus}\n")
        cmd += ["--ray", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / f"{mode}.log", "w"),
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {workdir / f'{mode}.log'}")
        try:
            get(f"http://127.0.0.1:{port}/healthz")
            return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not answer within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Client:
    """One live session: speaks ``pcm`` at real time from ``start`` and records when each frame arrives."""

    def __init__(self, url: str, model: str, pcm: bytes, size: int):
        self.url, self.model, self.pcm, self.size = url, model, pcm, size
        self.arrivals: list[float] = []
        self.indices: list[int] = []
        self.ready: dict = {}
        self.done: dict = {}
        self.start = 0.0
        self.error = ""

    def run(self, go: threading.Event) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, max_size=None, open_timeout=60,
                         additional_headers={"serve_multiplexed_model_id": self.model}) as ws:
                ws.send(json.dumps({"model": self.model, "format": "jpeg", "size": self.size}))
                self.ready = json.loads(ws.recv(timeout=120))
                reader = threading.Thread(target=self._read, args=(ws,))
                go.wait()
                self.start = time.perf_counter()
                reader.start()
                step = int(CHUNK_S * 16000) * 2
                for k, a in enumerate(range(0, len(self.pcm), step)):
                    delay = self.start + k * CHUNK_S - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    ws.send(self.pcm[a:a + step])
                ws.send(json.dumps({"type": "end"}))
                reader.join()
        except Exception as e:  # reported in the results, not raised: the other sessions' figures still count
            self.error = f"{type(e).__name__}: {e}"

    def _read(self, ws) -> None:
        while True:
            message = ws.recv(timeout=120)
            if isinstance(message, str):
                self.done = json.loads(message)
                return
            self.arrivals.append(time.perf_counter())
            self.indices.append(FRAME_HEADER.unpack_from(message)[0])

    def lateness_s(self, allowance: float) -> np.ndarray:
        """[frames] arrival minus the frame's deadline (positive: late)."""
        fps, budget = self.ready["fps"], self.ready["latency_ms"] / 1000 + allowance
        i = np.array(self.indices)
        return np.array(self.arrivals) - (self.start + i / fps + budget)


def measure(models: list[str], names: list[str], mode: str, sessions: int, pcm: bytes, workdir: Path, size: int,
            allowance: float, replicas: int, replica_cpus: float) -> dict:
    port = free_port()
    proc = start_server(models, mode, port, workdir, replicas, replica_cpus)
    try:
        base = f"http://127.0.0.1:{port}"
        pids = server_pids(proc, mode)
        idle_mb = rss_mb(pids)
        for name in names:  # warm-up: each model loaded on the replica(s) before the clock starts
            Client(base.replace("http", "ws") + "/session", name, pcm[:32000], size).run(_set_event())
        loaded_mb = rss_mb(server_pids(proc, mode))
        go = threading.Event()
        clients = [Client(base.replace("http", "ws") + "/session", names[k % len(names)], pcm, size)
                   for k in range(sessions)]
        threads = [threading.Thread(target=c.run, args=(go,)) for c in clients]
        for t in threads:
            t.start()
        time.sleep(2.0)  # every session open and ready
        peak = [rss_mb(server_pids(proc, mode))]
        kinds = {"all": server_pids(proc, mode)}
        if mode == "ray":
            kinds |= {"proxy": server_pids(proc, mode, "ProxyActor"),
                      "replicas": server_pids(proc, mode, "ServeReplica")}
        cpu0 = {k: cpu_s(p) for k, p in kinds.items()}
        go.set()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            peak.append(rss_mb(server_pids(proc, mode)))
        cpu = {k: cpu_s(p) - cpu0[k] for k, p in kinds.items()}
        metrics = get(base + "/metrics")
    finally:
        stop_server(proc)
    late = np.concatenate([c.lateness_s(allowance) for c in clients if c.arrivals]) \
        if any(c.arrivals for c in clients) else np.zeros(0)
    sent = max(1, sum(len(c.arrivals) for c in clients))
    expected = round(len(pcm) / 2 / 16000 * 25)
    complete = all(not c.error and len(c.arrivals) == expected and c.done.get("dropped") == 0 for c in clients)
    seconds = len(pcm) / 2 / 16000
    return {
        "mode": mode, "sessions": sessions, "held": bool(complete and (late <= 0).all()),
        "in_sync": bool(not any(c.error for c in clients) and (late <= 0).all()),
        "fps_per_session": [round(len(c.arrivals) / seconds, 1) for c in clients],
        "skipped": sum(c.done.get("skipped", 0) for c in clients),
        "dropped": sum(c.done.get("dropped", 0) for c in clients),
        "frames_late": int((late > 0).sum()), "frames": int(late.size), "frames_expected": expected * sessions,
        "lateness_s": {f"p{p}": round(float(np.percentile(late, p)), 3) for p in (50, 95, 100)} if late.size else {},
        "server_latency_ms": metrics["latency_ms"], "stream_latency_ms": clients[0].ready.get("latency_ms"),
        "allowance_s": allowance, "size": size, **({"replicas": replicas, "replica_cpus": replica_cpus}
                                                    if mode == "ray" else {}),
        "cpu_ms_per_frame": {k: round(1000 * v / sent, 1) for k, v in cpu.items()},
        "memory_mb": {"idle": round(idle_mb), "models_loaded": round(loaded_mb), "peak_sessions": round(max(peak)),
                      "per_model": round((loaded_mb - idle_mb) / len(names)),
                      "per_session": round((max(peak) - loaded_mb) / sessions)},
        "errors": [c.error for c in clients if c.error],
    }


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs=2, help="two model files or fitted subject folders")
    ap.add_argument("--sessions", default="1,2,3,4")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--modes", default="embedded,ray")
    ap.add_argument("--size", type=int, default=256, help="frame side of every session (px)")
    ap.add_argument("--allowance", type=float, default=0.5,
                    help="seconds past the stream's latency a frame may arrive and still be on time")
    ap.add_argument("--replicas", type=int, default=1, help="Ray replicas (mode ray)")
    ap.add_argument("--replica-cpus", type=float, default=2.0, help="CPUs each Ray replica asks for")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from talkgs.serve.models import ModelCatalog
    from talkgs.utils import media

    names = list(ModelCatalog(args.models).entries)
    samples = media.read_audio(SPEECH, 16000)[:int(args.seconds * 16000)]
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    results = []
    with tempfile.TemporaryDirectory(prefix="talkgs-bench-serve-") as tmp:
        for mode in args.modes.split(","):
            for n in map(int, args.sessions.split(",")):
                r = measure(args.models, names, mode, n, pcm, Path(tmp), args.size, args.allowance, args.replicas,
                            args.replica_cpus)
                results.append(r)
                print(json.dumps(r), flush=True)
    out = {"command": "python tools/bench_serve.py " + " ".join(sys.argv[1:]), "cpu_cores": os.cpu_count(),
           "models": names, "speech_s": args.seconds, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
