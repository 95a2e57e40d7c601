"""Render speed and memory of ``talkgs render --audio``, stage by stage.

    python tools/bench_render.py SUBJECT_DIR --audio SPEECH [--size 512] [--frames 200] [--device cuda]
    python tools/bench_render.py SUBJECT_DIR --audio SPEECH --memory   # whole render_speech, peak RSS
    python tools/bench_render.py SUBJECT_DIR --audio SPEECH --stream [--chunk-ms 40] [--lookahead 0.1]   # latency

The default mode times, per frame (averaged over --frames frames, after a warm-up batch), the two
halves of the head's one forward pass as ``talkgs render`` runs them: ``deform`` (audio nets and
motion fields, batched) and ``draw`` (rasterizing both branches, the torso layer and compositing),
then H.264 encoding; it reports the FPS with and without the video encoder. Audio feature extraction
is reported per second of audio. On CUDA, every timed section ends with a synchronize, so the times
are the GPU's.

--stream pushes the audio into ``TalkingRenderer.stream`` in real-time-sized chunks (``--chunk-ms``)
and times each push that returns frames: the compute a live caller waits for on top of the stream's
algorithmic latency (the audio look-ahead, ``AudioStream.latency_ms``), reported beside it.

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

import talkgs  # noqa: F401  (before torch, as the CLI: sets OpenMP's spin count, talkgs.utils.threads)

# isort: split
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


def bench_stream(subject: str, audio: str, size: int | None, device: str | None, chunk_ms: float,
                 seconds: float, lookahead_s: float | None = None) -> dict:
    from talkgs.render.driver import DriveConfig, TalkingRenderer, read_speech
    from talkgs.utils import media

    r = TalkingRenderer(subject, DriveConfig(size=size), device)
    samples = read_speech(audio)[:round(seconds * media.SAMPLE_RATE)]
    chunk = max(1, round(chunk_ms / 1000 * media.SAMPLE_RATE))
    warmup = media.SAMPLE_RATE  # the first second's pushes build kernels and caches: not timed
    stream = r.stream(lookahead_s=lookahead_s)
    waits, frames, total = [], 0, 0.0
    with torch.no_grad():
        for a in range(0, len(samples), chunk):
            _sync(r.device)
            t = time.perf_counter()
            out = stream.push(samples[a:a + chunk])
            _sync(r.device)
            dt = time.perf_counter() - t
            if a >= warmup:
                total += dt
                if out:
                    waits.append(dt)
                    frames += len(out)
        stream.close()
    if not waits:
        raise SystemExit(f"{audio}: too short to time the stream (needs more than 1 s after the warm-up)")
    ms = 1000 * np.array(waits)
    timed_s = (len(samples) - warmup) / media.SAMPLE_RATE
    return {
        "device": str(r.device), "gpu": torch.cuda.get_device_name(r.device) if r.device.type == "cuda" else None,
        "size": r.size, "encoders": list(r.encoders), "chunk_ms": round(1000 * chunk / media.SAMPLE_RATE, 1),
        "lookahead_ms": round(stream.latency_ms, 1), "lookahead_frames": stream.latency_frames,
        "encoder_lookahead_s": stream.features.lookahead_s,
        "frames_timed": frames,
        "compute_ms_per_push": {"median": round(float(np.median(ms)), 2),
                                "p95": round(float(np.percentile(ms, 95)), 2), "max": round(float(ms.max()), 2)},
        "latency_ms_p95": round(stream.latency_ms + float(np.percentile(ms, 95)), 1),
        "realtime_factor": round(timed_s / total, 2),
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
    p.add_argument("--stream", action="store_true")
    p.add_argument("--chunk-ms", type=float, default=40.0, help="--stream: audio per push")
    p.add_argument("--seconds", type=float, default=20.0, help="--stream: audio streamed (the first second untimed)")
    p.add_argument("--lookahead", type=float, help="--stream: the encoders' look-ahead in s (default: their own)")
    args = p.parse_args()
    if args.stream:
        result = bench_stream(args.subject, args.audio, args.size, args.device, args.chunk_ms, args.seconds,
                              args.lookahead)
    elif args.memory:
        result = bench_memory(args.subject, args.audio, args.size, args.device)
    else:
        result = bench_stages(args.subject, args.audio, args.size, args.frames, args.device, args.batch)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
