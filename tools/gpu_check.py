"""One prepared run that proves the CUDA path on a bare GPU machine and measures it.

    python3 tools/gpu_check.py --subject SUBJECT_DIR --out OUT_DIR [--budget 500]   # on the GPU
    python3 tools/gpu_check.py --dry-run --subject SUBJECT_DIR --out OUT_DIR         # same steps on CPU

SUBJECT_DIR is a prepared subject (on the GPU: the anchor clip prepared at 512 with the quality preset);
it is copied, never fitted in place. Every step is timed, its output teed into OUT_DIR/gpu_check.log, and
a failed step is recorded and the next one run, so one call tells everything there is to tell:

1. ``setup``: installs the wheels carried in ``.whl/`` (gsplat and the pure-Python packages the GPU image
   lacks) into a private folder, then builds gsplat's CUDA code and the ``cuda_ext`` hash grid with
   ``MAX_JOBS`` = the core count and ``TORCH_CUDA_ARCH_LIST=9.0`` (Hopper);
2. ``tests``: the CUDA tests (``pytest -m cuda``: gsplat against the torch rasterizer, the CUDA hash grid
   against the torch one, forward and backward);
3. ``slice``: every stage of the preset for ``--slice-iterations`` iterations on a copy of the subject:
   each stage's iterations per second (at the initial Gaussian count);
4. ``fit``: the full preset on another copy until ``--budget`` runs short, interrupted with SIGINT
   (the fit checkpoints, as Ctrl-C does), its model exported from the checkpoint: stages finished, their
   seconds and held-out PSNR, and the fit time (measured, or extrapolated from the stages' speeds: the
   report says which);
5. ``render``: tools/bench_render.py on the fit's model (its real Gaussian count), B = 1, 8 and 32 frames per
   draw, with and without video encoding, and the streaming API's audio-chunk-to-frame latency.

It writes OUT_DIR/gpu.json (gpu, render_fps_512 (the best batch size's), render_fps_512_by_batch,
render_fps_512_with_encoding, stream_latency_ms, fit_seconds, fit_seconds_kind, psnr, peak_gpu_mem_gb, model_mb,
and each step's details) and, where it fits the device tool's 16-MB file limit, the model split into
OUT_DIR/model.safetensors.part-* so that LMD, which needs MediaPipe, can be measured on the machine that has it
(``talkgs eval``).

The fits use ``--preset`` with the motion fields driven the ``--drive`` way (default ``code``: the mouth code read
from Whisper's features, the default drive of talkgs; ``audio``: the direct path the H200 check timed).

--dry-run runs the same steps on CPU with the tiny preset and a few iterations (tests/test_gpu_check.py),
so the first device minute is not the script's first run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
SITE = Path("/tmp/talkgs_gpu_site")
# This process reads talkgs too (the preset's stages, the export), from the checkout and the carried wheels.
sys.path[:0] = [str(ROOT), str(SITE)]
#: The device tool brings back files up to this size: larger ones are split into parts of it.
PART_BYTES = 15 * 2**20
#: Frames per draw call timed by the render step.
BATCHES = (1, 8, 32)


class Run:
    """The log, the timer and the report of one check."""

    def __init__(self, out: Path, budget: float, reserve: float, dry: bool):
        self.out = out
        self.reserve = reserve
        self.t0 = time.monotonic()
        self.budget = budget
        self.dry = dry
        self.report: dict = {"dry_run": dry, "steps": {}}
        self.log = open(out / "gpu_check.log", "a", buffering=1)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", MAX_JOBS=str(os.cpu_count() or 4),
                        TORCH_CUDA_ARCH_LIST="9.0")
        paths = [str(ROOT)] + ([str(SITE)] if SITE.is_dir() else [])
        self.env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def sh(self, name: str, cmd: list[str], timeout: float | None = None, interrupt_after: float | None = None,
           log_to: Path | None = None) -> tuple[int, str, float]:
        """Run ``cmd``, tee its output; SIGINT it after ``interrupt_after`` s (kill at ``timeout``)."""
        self.say(f"$ {' '.join(cmd)}")
        t = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                cwd=ROOT, start_new_session=True)
        lines: list[str] = []
        sink = open(log_to, "w") if log_to else None

        def pump() -> None:
            for raw in proc.stdout:
                # tqdm redraws with carriage returns: keep each line's last state in the log.
                line = raw.rstrip("\n").rsplit("\r", 1)[-1] + "\n"
                lines.append(line)
                self.log.write(line)
                if sink:
                    sink.write(raw)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        interrupted = False
        while proc.poll() is None:
            elapsed = time.monotonic() - t
            if interrupt_after is not None and not interrupted and elapsed > interrupt_after:
                self.say(f"{name}: budget reached, SIGINT")
                proc.send_signal(signal.SIGINT)
                interrupted = True
            if timeout is not None and elapsed > timeout:
                self.say(f"{name}: timed out after {elapsed:.0f} s, killed")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
        reader.join(timeout=10)
        if sink:
            sink.close()
        seconds = time.monotonic() - t
        self.say(f"{name}: exit {proc.returncode} in {seconds:.1f} s")
        return proc.returncode, "".join(lines), seconds

    def step(self, name: str, result: dict) -> dict:
        self.report["steps"][name] = result
        self.save()
        return result

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "gpu.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=1))
        os.replace(tmp, self.out / "gpu.json")


def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def setup(run: Run) -> None:
    wheels = sorted(WHEELS.glob("*.whl"))
    info: dict = {"wheels": [w.name for w in wheels]}
    if wheels and not run.dry:
        SITE.mkdir(parents=True, exist_ok=True)
        code, _, s = run.sh("wheels", py("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                         "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)))
        info["wheels_install"] = {"exit": code, "seconds": round(s, 1)}
        run.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SITE)])
    packed = WHEELS / "ffmpeg.xz"  # tools/gpu_carry.sh: imageio-ffmpeg's wheel comes without its binary
    if packed.is_file() and not run.dry:
        exe = SITE / "ffmpeg"
        code, _, s = run.sh("ffmpeg", ["sh", "-c", f"xz -dc {packed} > {exe} && chmod +x {exe}"])
        info["ffmpeg_unpack"] = {"exit": code, "seconds": round(s, 1)}
        run.env["IMAGEIO_FFMPEG_EXE"] = str(exe)
    probe = ("import json, torch, platform; d = torch.cuda.is_available(); "
             "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if d else None, "
             "'gpu_mem_gb': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if d else None}))")
    code, out, _ = run.sh("versions", py("-c", probe))
    info.update(json.loads(out.strip().splitlines()[-1]) if code == 0 else {"versions_error": out[-500:]})
    run.report["gpu"] = info.get("gpu")
    if info.get("gpu"):
        build_gsplat = "import gsplat; from gsplat.cuda._backend import _C; assert _C is not None, 'no _C'"
        code, out, s = run.sh("build gsplat", py("-c", build_gsplat), timeout=420)
        info["gsplat_build"] = {"exit": code, "seconds": round(s, 1), **({"error": out[-1500:]} if code else {})}
        build_ext = ("from talkgs.model._ext import load_hashgrid_ext; import sys; "
                     "sys.exit(0 if load_hashgrid_ext() is not None else 1)")
        code, out, s = run.sh("build cuda_ext", py("-c", build_ext), timeout=300)
        info["cuda_ext_build"] = {"exit": code, "seconds": round(s, 1), **({"error": out[-1500:]} if code else {})}
    else:
        info["builds"] = "skipped: no CUDA device"
    run.step("setup", info)


def tests(run: Run) -> None:
    code, out, s = run.sh("cuda tests", py("-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider",
                                           "tests/test_render.py", "tests/test_hashgrid.py"),
                          timeout=240, log_to=run.out / "pytest_cuda.txt")
    summary = [ln for ln in out.splitlines() if " passed" in ln or " failed" in ln or " skipped" in ln
               or " error" in ln]
    run.step("tests", {"exit": code, "seconds": round(s, 1), "summary": summary[-1] if summary else out[-300:]})


#: ``--drive``: what moves the motion fields in the check's fits, over the preset's own head settings.
DRIVES = {"code": {"drive": "code", "audio_encoders": ["whisper"]},
          "audio": {"drive": "audio", "audio_encoders": ["mel"]}}


def with_drive(preset: str, drive: str, work: Path) -> str:
    """``preset`` itself (``drive`` "preset"), or a copy of it in ``work`` whose fit is driven the ``drive`` way."""
    if drive == "preset":
        return preset
    from talkgs.utils.config import load_yaml, resolve_preset, save_yaml

    data = load_yaml(resolve_preset(preset))
    data.setdefault("fit", {}).setdefault("head", {}).update(DRIVES[drive])
    path = work / f"{Path(preset).stem}_{drive}.yaml"
    save_yaml(data, path)
    return str(path)


def fit_args(subject: Path, preset: str, device: str, iterations: int | None) -> list[str]:
    """``talkgs fit``'s arguments."""
    args = ["fit", str(subject), "--config", preset, "--device", device]
    return args + (["--iterations", str(iterations)] if iterations else [])


def copy_subject(src: Path, dst: Path, cache_from: Path | None = None) -> Path:
    """A fresh copy of the subject to fit; ``cache_from``'s training-resolution frame cache comes along
    (it is keyed by the frames' size and modification time, which copy2 keeps)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("fit", "preview"))
    if cache_from is not None and (cache_from / "fit" / "cache").is_dir():
        shutil.copytree(cache_from / "fit" / "cache", dst / "fit" / "cache")
    return dst


def _stage_preset(preset: str) -> dict[str, int]:
    from talkgs.train.config import FitConfig
    from talkgs.utils.config import load_section

    return {s.name: s.iterations for s in load_section(FitConfig, preset, "fit").stages}


def slice_fit(run: Run, subject: Path, work: Path, preset: str, device: str, iterations: int) -> dict:
    root = copy_subject(subject, work / "slice")
    code, out, s = run.sh("slice fit", py("-m", "talkgs.cli.main", *fit_args(root, preset, device, iterations)),
                          timeout=max(60, run.left() / 3))
    result: dict = {"exit": code, "seconds": round(s, 1), "iterations_per_stage": iterations}
    report = root / "fit" / "fit_report.json"
    if code == 0 and report.is_file():
        stages = json.loads(report.read_text())["stages"]
        result["it_per_s"] = {k: round(v["iterations"] / max(v["seconds"], 1e-6), 2) for k, v in stages.items()}
    else:
        result["error"] = out[-1500:]
    return run.step("slice", result)


def export_interrupted(root: Path) -> dict:
    """Write fit/model.safetensors from an interrupted fit's checkpoint (the head as far as it got)."""
    import torch

    from talkgs.data import schema
    from talkgs.data.subject import Subject
    from talkgs.model.talking_head import TalkingHead
    from talkgs.train.checkpoint import load_checkpoint
    from talkgs.train.config import FitConfig
    from talkgs.train.context import FitContext
    from talkgs.train.trainer import fitted_model
    from talkgs.utils.config import from_dict, load_yaml

    subject = Subject(root)
    cfg = from_dict(FitConfig, load_yaml(root / schema.FIT_CONFIG))
    ctx = FitContext(subject, cfg)
    ckpt = load_checkpoint(root / schema.CHECKPOINT, ctx.device)
    audio_dim = ctx.features.shape[-1] if ctx.features is not None else 1
    head = TalkingHead.from_tensors(ckpt["model"], audio_dim, cfg.head).to(ctx.device)
    with torch.no_grad():
        fitted_model(subject, cfg, ctx, head).save(root / schema.MODEL)
    return {"stage_index": int(ckpt["stage_index"]), "step": int(ckpt["step"]),
            "elapsed_s": round(float(ckpt.get("elapsed", 0.0)), 1), "report": json.loads(ckpt["report"]),
            "gaussians": head.face.num_gaussians, "mouth_gaussians": head.mouth.num_gaussians}


def full_fit(run: Run, subject: Path, work: Path, preset: str, device: str, iterations: int | None,
             slice_speed: dict | None) -> Path | None:
    root = copy_subject(subject, work / "full", cache_from=work / "slice")
    allowed = run.left() - run.reserve
    if allowed < run.budget / 10:  # too short to reach the first checkpointed step
        run.step("fit", {"skipped": f"only {run.left():.0f} s left"})
        return None
    memory_probe = root / "peak_gpu_mem.json"
    run.env["TALKGS_GPU_CHECK_MEM"] = str(memory_probe)
    child = py(str(Path(__file__)), "--fit-child", *fit_args(root, preset, device, iterations))
    code, out, s = run.sh("full fit", child, interrupt_after=allowed, timeout=allowed + 60)
    del run.env["TALKGS_GPU_CHECK_MEM"]
    result: dict = {"exit": code, "seconds": round(s, 1), "budget_s": round(allowed, 1)}
    if memory_probe.is_file():
        result.update(json.loads(memory_probe.read_text()))
    plan = _stage_preset(preset) if iterations is None else {k: iterations for k in _stage_preset(preset)}
    report_file = root / "fit" / "fit_report.json"
    if code == 0 and report_file.is_file():
        report = json.loads(report_file.read_text())
        result.update(finished=True, stages=report["stages"], model_mb=report["model_mb"],
                      fit_seconds=round(sum(v["seconds"] for v in report["stages"].values()), 1),
                      fit_seconds_kind="measured")
    elif (root / "fit" / "checkpoint.pt").is_file():
        code, out, _ = run.sh("export", py(str(Path(__file__)), "--export-child", str(root)), timeout=300)
        if code != 0:
            result["export_error"] = out[-1500:]
            run.step("fit", result)
            return None
        state = json.loads(out.strip().splitlines()[-1])
        done = state["report"]["stages"]
        names = list(plan)
        current = names[state["stage_index"]] if state["stage_index"] < len(names) else None
        seconds = sum(v["seconds"] for v in done.values())
        estimate = {k: v["seconds"] for k, v in done.items()}
        if current and state["step"] > 0:
            rate = state["step"] / max(state["elapsed_s"], 1e-6)
            estimate[current] = round(plan[current] / rate, 1)
            result["current_stage"] = {"name": current, "step": state["step"], "it_per_s": round(rate, 2)}
        for name in names:
            if name not in estimate and slice_speed and name in slice_speed:
                estimate[name] = round(plan[name] / slice_speed[name], 1)
        result.update(finished=False, stages=done, measured_stage_seconds=round(seconds, 1),
                      stage_seconds_estimate=estimate, gaussians=state["gaussians"],
                      mouth_gaussians=state["mouth_gaussians"],
                      model_mb=round((root / "fit" / "model.safetensors").stat().st_size / 2**20, 2))
        if set(estimate) == set(names):
            result.update(fit_seconds=round(sum(estimate.values()), 1), fit_seconds_kind="extrapolated")
    else:
        result["error"] = out[-1500:]
        run.step("fit", result)
        return None
    run.step("fit", result)
    return root


def render(run: Run, root: Path, device: str, size: int, frames: int, stream_seconds: float) -> None:
    audio = str(root / "audio.wav")
    bench = [str(ROOT / "tools" / "bench_render.py"), str(root), "--audio", audio, "--device", device,
             "--size", str(size)]
    result = {}
    # B frames per draw: gsplat rasterizes a batch in one call (issue 29), so the FPS is measured per batch size.
    runs = [(f"batch_{b}", ["--frames", str(max(frames, 4 * b)), "--batch", str(b)]) for b in BATCHES]
    for name, extra in (*runs, ("stream", ["--stream", "--seconds", str(stream_seconds)])):
        code, out, s = run.sh(f"render {name}", py(*bench, *extra), timeout=240)
        try:
            result[name] = json.loads(out[out.index("{"):])
        except ValueError:
            result[name] = {"exit": code, "error": out[-1500:]}
    run.step("render", result)


def split_model(run: Run, root: Path) -> None:
    model = root / "fit" / "model.safetensors"
    if not model.is_file():
        return
    data = model.read_bytes()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    if len(parts) > 4:
        run.say(f"model is {len(data) / 2**20:.1f} MB: too large to bring back in parts")
        return
    for k, part in enumerate(parts):
        (run.out / f"model.safetensors.part-{k}").write_bytes(part)
    (run.out / "fit_config.yaml").write_bytes((root / "fit" / "config.yaml").read_bytes())


def summarise(run: Run) -> None:
    steps = run.report["steps"]
    fit = steps.get("fit", {})
    renders = steps.get("render", {})
    by_batch = {b: renders.get(f"batch_{b}", {}) for b in BATCHES}
    fps = {b: r.get("fps_without_encoding") for b, r in by_batch.items()}
    best = max((b for b in BATCHES if fps[b] is not None), key=lambda b: fps[b], default=BATCHES[-1])
    batched = by_batch[best]
    stream = steps.get("render", {}).get("stream", {})
    stages = fit.get("stages") or {}
    last = list(stages.values())[-1] if stages else {}
    run.report.update({
        "render_fps_512": batched.get("fps_without_encoding"), "render_batch": batched.get("batch"),
        "render_fps_512_by_batch": {str(b): v for b, v in fps.items()},
        "render_fps_512_with_encoding": batched.get("fps_with_encoding"),
        "render_size": batched.get("size"),
        "stream_latency_ms": stream.get("latency_ms_p95"),
        "stream_lookahead_ms": stream.get("lookahead_ms"),
        "fit_seconds": fit.get("fit_seconds"), "fit_seconds_kind": fit.get("fit_seconds_kind"),
        "psnr": last.get("psnr"), "psnr_head": last.get("psnr_head"), "psnr_mouth": last.get("psnr_mouth"),
        "psnr_stage": list(stages)[-1] if stages else None,
        "lmd_px": None, "lmd_note": "measured off the device from the returned model (needs MediaPipe)",
        "peak_gpu_mem_gb": fit.get("peak_gpu_mem_gb"), "model_mb": fit.get("model_mb"),
    })
    run.save()


def fit_child(argv: list[str]) -> int:
    """``talkgs fit`` in this process, recording the peak GPU memory when it ends, interrupted or not."""
    import torch

    from talkgs.cli.main import main

    try:
        return main(argv)
    finally:
        probe = os.environ.get("TALKGS_GPU_CHECK_MEM")
        if probe and torch.cuda.is_available():
            Path(probe).write_text(json.dumps({"peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30,
                                                                        2)}))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--fit-child":
        return fit_child(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--export-child":
        print(json.dumps(export_interrupted(Path(sys.argv[2]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", required=True, type=Path, help="prepared subject (copied, not changed)")
    p.add_argument("--out", required=True, type=Path, help="folder for gpu.json, the log and the model parts")
    p.add_argument("--budget", type=float, default=500, help="seconds for the whole check")
    p.add_argument("--reserve", type=float, default=90,
                   help="seconds kept back from the fit for the model export and the render benchmark")
    p.add_argument("--preset", default="quality")
    p.add_argument("--drive", choices=("code", "audio", "preset"), default="code",
                   help="fit the mouth-code path (the default drive; needs the whisper features and the "
                        "canonical landmarks), the direct audio path, or whatever the preset says")
    p.add_argument("--slice-iterations", type=int, default=200)
    p.add_argument("--fit-iterations", type=int, help="override every stage's iterations of the full fit")
    p.add_argument("--size", type=int, default=512, help="render size of the render benchmark")
    p.add_argument("--frames", type=int, default=400, help="frames timed by the batched render benchmark")
    p.add_argument("--stream-seconds", type=float, default=12, help="audio streamed by the stream benchmark")
    p.add_argument("--work", type=Path, default=Path("/tmp/talkgs_gpu_work"))
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, no wheels or builds; use with --preset tiny and few iterations")
    p.add_argument("--skip", action="append", default=[], choices=("tests", "slice", "fit", "render"))
    args = p.parse_args()
    if not (args.subject / "subject.json").is_file():
        print(f"gpu_check: {args.subject} is not a prepared subject (no subject.json)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, args.budget, args.reserve, args.dry_run)
    device = "cpu" if args.dry_run else "cuda"
    run.report["command"] = " ".join(sys.argv)
    setup(run)
    if not args.dry_run and not run.report["gpu"]:
        run.say("no CUDA device: stopping (use --dry-run on CPU)")
        summarise(run)
        return 1
    if "tests" not in args.skip:
        tests(run)
    preset = with_drive(args.preset, args.drive, args.work)
    run.report["drive"] = args.drive
    speed = None
    if "slice" not in args.skip:
        speed = slice_fit(run, args.subject, args.work, preset, device, args.slice_iterations).get("it_per_s")
    root = None
    if "fit" not in args.skip:
        root = full_fit(run, args.subject, args.work, preset, device, args.fit_iterations, speed)
    if root is None and (args.work / "slice" / "fit" / "model.safetensors").is_file():
        root = args.work / "slice"  # the render benchmark still runs, on the slice's (smaller) model
        run.report["render_model"] = "slice"
    if root is not None and "render" not in args.skip:
        render(run, root, device, args.size, args.frames, args.stream_seconds)
    if root is not None:
        split_model(run, root)
    summarise(run)
    run.say(f"done: {json.dumps({k: v for k, v in run.report.items() if k != 'steps'})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
