"""Benchmark ``talkgs prepare``: wall time and peak memory of the whole process tree.

The prepare command runs in a child process; a sampler adds up the resident memory of it and of
its ffmpeg children every 50 ms. Running it on the first N seconds of a clip and on the whole clip
shows whether memory stays flat in the video's length.

    python tools/bench_prepare.py ../shared/data/video/anchor_en_71s_512.mp4 --size 512 \
        --encoders mel,phonemes --cut 20 --json docs/benchmarks/prepare_anchor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from talkgs.data.schema import FRAMES, REPORT


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total / 2**20


def run(video: Path, size: int, encoders: str, out_root: Path) -> dict:
    out = out_root / f"subject_{video.stem}"
    cmd = [sys.executable, "-m", "talkgs.cli.main", "--quiet", "prepare", str(video), "-o", str(out),
           "--size", str(size), "--audio-encoder", encoders, "--force"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0.0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_mb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"prepare failed with exit code {code}")
    report = json.loads((out / REPORT).read_text())
    return {
        "video": video.name,
        "video_seconds": report["duration_s"],
        "frames": report["frames"],
        "size": report["size"],
        "wall_seconds": round(wall, 2),
        "realtime_factor": round(report["duration_s"] / wall, 2),
        "peak_rss_tree_mb": round(peak, 1),
        "peak_rss_python_mb": report["peak_rss_mb"],
        "reprojection_rmse_px": report["reprojection_rmse_px"],
        "reprojection_rmse_unsmoothed_px": report["reprojection_rmse_unsmoothed_px"],
        "focal_px": report["focal_px"],
        "motion_error_px": report["motion_error_px"],
        "av_offset_frames": report["av_offset_frames"],
        "cuts": report["cuts"],
        "stage_seconds": report["stage_seconds"],
        "frames_mp4_mb": round((out / FRAMES).stat().st_size / 2**20, 2),
        "subject_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", type=Path)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--encoders", default="mel,phonemes")
    ap.add_argument("--cut", type=float, default=0.0, help="also run on the first CUT seconds (memory flatness)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    from talkgs.utils.media import ffmpeg_exe

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.cut:
            short = tmp / f"{args.video.stem}_first{args.cut:g}s.mp4"
            subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(args.video), "-t", str(args.cut),
                            "-c:v", "libx264", "-crf", "12", "-c:a", "aac", str(short)], check=True)
            results.append(run(short, args.size, args.encoders, tmp))
        results.append(run(args.video, args.size, args.encoders, tmp))
    summary = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "runs": results,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
