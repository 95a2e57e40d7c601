"""tools/gpu_check.py's CPU dry run: the steps the GPU check runs, so that a device minute is never its first run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from talkgs.utils.config import load_yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_check.py"


def test_dry_run_fits_until_interrupted_exports_and_benchmarks(demo_subject, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    # The full fit is far longer than the budget allows: it is interrupted with SIGINT, checkpoints, and its
    # model is exported from the checkpoint, as on the GPU.
    cmd = [sys.executable, str(TOOL), "--dry-run", "--subject", str(demo_subject[0]), "--out", str(out),
           "--work", str(work), "--preset", "tiny", "--slice-iterations", "2", "--fit-iterations", "20000",
           "--budget", "60", "--reserve", "12", "--size", "64", "--frames", "8", "--stream-seconds", "4",
           "--skip", "tests"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    steps = report["steps"]
    assert report["dry_run"] and report["gpu"] is None and steps["setup"]["builds"].startswith("skipped")
    # The fits ran the mouth-code path (the default --drive) on Whisper's features.
    assert report["drive"] == "code"
    fit_cfg = load_yaml(work / "full" / "fit" / "config.yaml")["head"]
    assert fit_cfg["drive"] == "code" and fit_cfg["audio_encoders"] == ["whisper"]
    assert set(steps["slice"]["it_per_s"]) == {"static", "mouth", "face", "fuse"}
    fit = steps["fit"]
    assert fit["exit"] != 0 and fit["finished"] is False and fit["current_stage"]["name"] == "static"
    assert 0 < fit["current_stage"]["step"] < 20000
    assert fit["fit_seconds_kind"] == "extrapolated" and fit["fit_seconds"] > 0
    assert set(fit["stage_seconds_estimate"]) == {"static", "mouth", "face", "fuse"}
    assert report["model_mb"] > 0 and (out / "model.safetensors.part-0").is_file()
    stream = steps["render"]["stream"]
    for b in (1, 8, 32):  # frames per draw: gsplat's batched call on the GPU, the same draw API here
        batched = steps["render"][f"batch_{b}"]
        assert batched["size"] == 64 and batched["batch"] == b and batched["frames_timed"] >= 4 * b
        assert 0 < batched["fps_with_encoding"] <= batched["fps_without_encoding"]
    fps = report["render_fps_512_by_batch"]
    assert set(fps) == {"1", "8", "32"} and report["render_fps_512"] == max(fps.values())
    assert report["stream_latency_ms"] > stream["lookahead_ms"] > 0
    log = (out / "gpu_check.log").read_text()
    assert "full fit: budget reached, SIGINT" in log and "export: exit 0" in log


def test_not_a_subject_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--dry-run", "--subject", str(tmp_path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"gpu_check: {tmp_path} is not a prepared subject (no subject.json)"]
