"""Speed under load: the fit's training step and the 256-px render, alone and beside other jobs (issue 29).

    python tools/bench_load.py SUBJECT_DIR [--iterations 600] [--frames 200] [--json docs/benchmarks/load.json]
        [--env KEY=VALUE ...] [--only fit,render] [--beside none,fit,numpy,numpy1,spin]

SUBJECT_DIR is a prepared subject with a fit (its ``fit/`` is used by the render and left untouched; the fits run
on copies of the subject without it). Each workload runs in its own process, four ways:

- ``none``: alone;
- ``fit``: beside a second ``talkgs fit`` of the same subject (for the fit: both start together and both are timed);
- ``numpy``: beside a numpy job with numpy's own thread pool (OpenBLAS, a thread per core): least-squares solves
  and matrix products in a loop, the pattern of a regression script; ``numpy1``: the same on one thread;
- ``spin``: beside a Python busy loop (one core).

The fit workload is ``talkgs fit COPY --config cpu --stage static --iterations N --force`` and its figure is the
static stage's own seconds from fit_report.json (the set-up before it is not the training step). The render
workload is ``tools/bench_render.py`` at 256 px (per-frame deform + draw, no encoder). A neighbour starts a second
before the timed job, runs until it ends, and is then stopped. ``--env`` sets variables for every talkgs process
(e.g. ``OMP_WAIT_POLICY=ACTIVE`` to measure the old behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "data" / "audio" / "commentary_en_60s.wav"

NUMPY_JOB = """
import numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((2000, 300)); b = rng.standard_normal(2000)
while True:
    np.linalg.lstsq(a, b, rcond=None)
    a @ a.T
"""
SPIN_JOB = "while True:\n    pass\n"


def _fit_command(subject: Path, iterations: int) -> list[str]:
    return [sys.executable, "-m", "talkgs.cli.main", "fit", str(subject), "--config", "cpu", "--stage", "static",
            "--iterations", str(iterations), "--force"]


def _copy_subject(subject: Path, to: Path) -> Path:
    shutil.copytree(subject, to, ignore=shutil.ignore_patterns("fit", "bench_eval*", "eval_*"))
    return to


def _fit_seconds(subject: Path) -> float:
    report = json.loads((subject / "fit" / "fit_report.json").read_text())
    return float(report["stages"]["static"]["seconds"])


def _neighbour(kind: str, work: Path, subject: Path, iterations: int, env: dict) -> subprocess.Popen | None:
    if kind == "none":
        return None
    if kind == "fit":
        peer = _copy_subject(subject, work / f"peer_{time.monotonic_ns()}")
        cmd = _fit_command(peer, iterations * 4)  # outlasts the timed job; stopped when it ends
    else:
        cmd = [sys.executable, "-c", SPIN_JOB if kind == "spin" else NUMPY_JOB]
        env = dict(os.environ)  # the neighbour is someone else's job: the user's environment, not talkgs'
        if kind == "numpy1":
            env["OPENBLAS_NUM_THREADS"] = "1"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def run_fit(subject: Path, work: Path, beside: str, iterations: int, env: dict) -> dict:
    mine = _copy_subject(subject, work / f"fit_{beside}")
    if beside == "fit":
        # Two fits started together, both timed: the case the issue measured (each took 5.5x one alone).
        other = _copy_subject(subject, work / "fit_fit_other")
        procs = [subprocess.Popen(_fit_command(s, iterations), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for s in (mine, other)]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise SystemExit(f"fit failed: {err.strip().splitlines()[-1:]}")
        seconds = [_fit_seconds(s) for s in (mine, other)]
        return {"seconds": max(seconds), "each": seconds}
    peer = _neighbour(beside, work, subject, iterations, env)
    try:
        done = subprocess.run(_fit_command(mine, iterations), env=env, capture_output=True, text=True)
    finally:
        _stop(peer)
    if done.returncode:
        raise SystemExit(f"fit failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"seconds": _fit_seconds(mine)}


def run_render(subject: Path, work: Path, beside: str, frames: int, iterations: int, env: dict) -> dict:
    peer = _neighbour(beside, work, subject, iterations, env)
    try:
        done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_render.py"), str(subject), "--audio",
                               str(AUDIO), "--size", "256", "--frames", str(frames)], env=env, capture_output=True,
                              text=True)
    finally:
        _stop(peer)
    if done.returncode:
        raise SystemExit(f"render failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout[done.stdout.index("{"):])
    ms = result["ms_per_frame"]
    return {"ms_per_frame": round(ms["deform"] + ms["draw"], 2), "deform_ms": ms["deform"], "draw_ms": ms["draw"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject", type=Path)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--only", default="fit,render")
    p.add_argument("--beside", default="none,fit,numpy,numpy1,spin")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the talkgs processes")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not (args.subject / "fit" / "model.safetensors").is_file():
        raise SystemExit(f"{args.subject} has no fit (fit/model.safetensors); fit it first")
    if not AUDIO.is_file():
        raise SystemExit(f"{AUDIO} is missing: the render needs ../shared/data")
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        for workload in args.only.split(","):
            for beside in args.beside.split(","):
                work = Path(tmp) / f"{workload}_{beside}"
                work.mkdir()
                if workload == "fit":
                    r = run_fit(args.subject, work, beside, args.iterations, env)
                else:
                    r = run_render(args.subject, work, beside, args.frames, args.iterations, env)
                results.setdefault(workload, {})[beside] = r
                alone = results[workload].get("none")
                key = "seconds" if workload == "fit" else "ms_per_frame"
                if alone is not None:
                    r["vs_alone"] = round(r[key] / alone[key], 2)
                print(f"{workload} beside {beside}: {r}", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    out = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "cores": os.cpu_count(),
           "env": dict(kv.split("=", 1) for kv in args.env), "results": results}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
