"""Benchmark ``talkgs.render.rasterize``: forward and forward+backward time, peak memory.

The scene is head-like: N Gaussians in a 0.2 m blob (two thirds on an ellipsoidal shell, the rest
filling it) 0.65-0.85 m in front of the camera, scales 2-10 mm, random rotations, opacities
sigmoid(2 randn), SH degree 2 colours; the focal length makes the blob span 80% of the image, as in a
talking-head crop. Cases: 128x128 with 10k Gaussians, 256x256 with 30k, 512x512 with 50k.

Each case runs in its own process, so its peak resident memory is its own. It is warmed up once,
then timed ``--repeats`` times; the median is reported. On the CPU the compiled kernels (backend "cpu")
run beside the torch backend, their twin; when CUDA is available the gsplat and torch backends run on the
GPU too.

    python tools/bench_rasterize.py --json outputs/bench_rasterize.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from talkgs.render import has_gsplat_cuda, rasterize

CASES = ((128, 10_000), (256, 30_000), (512, 50_000))
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def head_scene(n: int, size: int, device: str = "cpu", seed: int = 0) -> dict:
    """Inputs of ``rasterize`` (all but width and height) for n Gaussians seen in a size x size image."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    r = torch.ones(n)
    n_shell = 2 * n // 3
    r[n_shell:] = torch.rand(n - n_shell, generator=g) ** (1 / 3)  # uniform inside the ellipsoid
    means = d * r[:, None] * torch.tensor([0.08, 0.10, 0.10]) + torch.tensor([0.0, 0.0, 0.75])
    focal = 0.8 * size * 0.75 / 0.2
    colors = 0.3 * torch.randn(n, 9, 3, generator=g)
    colors[:, 0] += 1.0
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),
        "scales": 0.002 + 0.008 * torch.rand(n, 3, generator=g),
        "opacities": torch.sigmoid(2.0 * torch.randn(n, generator=g)),
        "colors": colors,
        "viewmat": torch.eye(4),
        "K": torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]]),
    }
    return {k: v.to(device) for k, v in scene.items()}


def _median_time(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x{len(names)}" if names else platform.machine()
    except OSError:
        return platform.machine()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(size: int, n: int, backend: str, device: str, repeats: int) -> dict:
    """Time one case in this process."""
    scene = head_scene(n, size, device)
    for k in PARAMS:
        scene[k].requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss_before = _rss_mb()

    def forward():
        with torch.no_grad():
            return rasterize(**scene, width=size, height=size, backend=backend)

    def forward_backward():
        out = rasterize(**scene, width=size, height=size, backend=backend)
        out.info["means2d"].retain_grad()  # as the densification strategy does
        (out.image.sum() + out.alpha.sum() + out.depth.sum()).backward()
        for k in PARAMS:
            scene[k].grad = None

    out = forward()
    result = {
        "backend": backend,
        "device": device,
        "size": size,
        "gaussians": n,
        "visible": int((out.info["radii"][0, :, 0] > 0).sum()),
        "mean_alpha": round(float(out.alpha.mean()), 4),
        "forward_s": round(_median_time(forward, repeats, sync), 4),
        "forward_backward_s": round(_median_time(forward_backward, repeats, sync), 4),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }
    if device == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the summary to this file")
    parser.add_argument("--case", nargs=4, metavar=("SIZE", "N", "BACKEND", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        size, n, backend, device = args.case
        print(json.dumps(run_case(int(size), int(n), backend, device, args.repeats)))
        return

    from talkgs.render._cpu_backend import cpu_kernels

    # The compiled kernels (built here once, before any timing) beside their PyTorch twin.
    cpu_backends = ("cpu", "torch") if cpu_kernels() is not None else ("torch",)
    runs = [(size, n, backend, "cpu") for size, n in CASES for backend in cpu_backends]
    if has_gsplat_cuda():
        runs += [(size, n, backend, "cuda") for size, n in CASES for backend in ("gsplat", "torch")]
    results = []
    for size, n, backend, device in runs:
        cmd = [sys.executable, __file__, "--case", str(size), str(n), backend, device, "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    summary = {
        "command": " ".join(["python", "tools/bench_rasterize.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": args.threads or torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
