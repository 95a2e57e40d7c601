"""Render speed and memory of ``talkgs render --audio``, stage by stage.

    python tools/bench_render.py SUBJECT_DIR --audio SPEECH [--size 512] [--frames 200] [--device cuda]
    python tools/bench_render.py SUBJECT_DIR --audio SPEECH --memory   # whole render_speech, peak RSS

The default mode times, per frame (averaged over --frames frames, after a warm-up batch), the two
halves of the head's one forward pass as ``talkgs render`` runs them: ``deform`` (audio nets and
motion fields, batched) and ``draw`` (rasterizing both branches, the torso layer and compositing),
then H.264 encoding; it reports the FPS with and without the video encoder. Audio feature extraction
is reported per second of audio. On CUDA, every timed section ends with a synchronize, so the times
are the GPU's.

--memory renders the whole audio with ``render_speech`` (frames streamed to the encoder) and
reports the Python process's peak resident memory, to show that it does not grow with the audio's
length (the ffmpeg encoder and decoder are separate processes that stream).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_stages(subject: str, audio: str, size: int | None, frames: int, device: str | None, batch: int) -> dict:
    from talkgs.render.driver import DriveConfig, TalkingRenderer, read_speech
    from talkgs.utils import media

    r = TalkingRenderer(subject, DriveConfig(size=size, batch=batch), device)
    dev = r.device
    samples = read_speech(audio)
    n_total = r.num_frames(samples)
    t0 = time.perf_counter()
    features = r.encode(samples, n_total)
    feature_s = time.perf_counter() - t0
    frames = min(frames, n_total)
    times = {"deform": 0.0, "draw": 0.0, "encoding": 0.0}
    head = r.head
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), \
            media.VideoWriter(Path(tmp) / "bench.mp4", (r.size, r.size), r.fps, crf=16, preset="veryfast",
                              pix_fmt="yuv420p") as writer:
        done = 0
        for a in range(-batch, frames, batch):  # the first batch warms up (kernels, caches) and is not timed
            idx = np.arange(max(a, 0), min(max(a, 0) + batch, frames))
            _sync(dev)
            t = time.perf_counter()
            # The renderer's own two halves of the forward pass (talkgs.render.forward), timed apart.
            deformation = r.deform(features, idx)
            _sync(dev)
            t1 = time.perf_counter()
            images = r.draw(deformation, idx)
            _sync(dev)
            t2 = time.perf_counter()
            for image in images:
                writer.write(image)
            t3 = time.perf_counter()
            if a >= 0:
                times["deform"] += t1 - t
                times["draw"] += t2 - t1
                times["encoding"] += t3 - t2
                done += len(idx)
    per_frame_ms = {k: round(1000 * v / done, 3) for k, v in times.items()}
    render_s = times["deform"] + times["draw"]
    return {
        "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "size": r.size, "gaussians": head.face.num_gaussians, "mouth_gaussians": head.mouth.num_gaussians,
        "frames_timed": done, "batch": batch, "encoders": list(r.encoders),
        "features_s_per_audio_s": round(feature_s / (len(samples) / media.SAMPLE_RATE), 4),
        "ms_per_frame": per_frame_ms,
        "fps_without_encoding": round(done / render_s, 1),
        "fps_with_encoding": round(done / (render_s + times["encoding"]), 1),
        "torch_threads": torch.get_num_threads(),
    }


def bench_memory(subject: str, audio: str, size: int | None, device: str | None) -> dict:
    from talkgs.render.driver import DriveConfig, render_speech

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = render_speech(subject, audio, Path(tmp) / "out.mp4", DriveConfig(size=size), device)
        seconds = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**summary, "seconds": round(seconds, 1), "fps": round(summary["frames"] / seconds, 1),
            "peak_rss_mb": round(peak_kb / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject")
    p.add_argument("--audio", required=True)
    p.add_argument("--size", type=int)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device")
    p.add_argument("--memory", action="store_true")
    args = p.parse_args()
    if args.memory:
        result = bench_memory(args.subject, args.audio, args.size, args.device)
    else:
        result = bench_stages(args.subject, args.audio, args.size, args.frames, args.device, args.batch)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
