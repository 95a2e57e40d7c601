"""Render speed and memory of ``talkgs render --audio``, stage by stage.

    python tools/bench_render.py SUBJECT_DIR --audio SPEECH [--size 512] [--frames 200] [--device cuda]
    python tools/bench_render.py SUBJECT_DIR --audio SPEECH --memory   # whole render_speech, peak RSS

The default mode times, per frame (averaged over --frames frames, after a warm-up batch):
audio encoding (features + audio nets), deformation (motion fields, batched), rasterization,
compositing, and H.264 encoding; and reports the FPS with and without the video encoder. On CUDA,
every timed section ends with a synchronize, so the times are the GPU's.

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
    from talkgs.model.motion import apply_deltas
    from talkgs.render.compositing import composite
    from talkgs.render.driver import DriveConfig, Layers, TalkingRenderer, read_speech
    from talkgs.utils import media

    r = TalkingRenderer(subject, DriveConfig(size=size, batch=batch), device)
    dev = r.device
    samples = read_speech(audio)
    n_total = r.num_frames(samples)
    t0 = time.perf_counter()
    features = r.encode(samples, n_total)
    feature_s = time.perf_counter() - t0
    frames = min(frames, n_total)
    times = {"audio_net": 0.0, "deformation": 0.0, "rasterization": 0.0, "compositing": 0.0, "encoding": 0.0}
    head = r.head
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), \
            media.VideoWriter(Path(tmp) / "bench.mp4", (r.size, r.size), r.fps, crf=16, preset="veryfast",
                              pix_fmt="yuv420p") as writer:
        done = 0
        for a in range(-batch, frames, batch):  # the first batch warms up (kernels, caches) and is not timed
            idx = np.arange(max(a, 0), min(max(a, 0) + batch, frames))
            timed = a >= 0
            ix = torch.as_tensor(idx, device=dev)
            expr = torch.tensor(np.stack([r.track.expression(int(i)) for i in idx]), dtype=torch.float32, device=dev)
            _sync(dev)
            t = time.perf_counter()
            audio_face, audio_mouth = head.audio_face(features, ix), head.audio_mouth(features, ix)
            _sync(dev)
            t1 = time.perf_counter()
            face_d = head.face_motion(head.face.params["means"], audio_face, (expr - head.expr_mean) / head.expr_std)
            mouth_d = head.mouth_motion(head.mouth.params["means"], audio_mouth)
            face_g, mouth_g = apply_deltas(head.face, face_d), apply_deltas(head.mouth, mouth_d)
            _sync(dev)
            t2 = time.perf_counter()
            raster, comp, enc = 0.0, 0.0, 0.0
            for b, i in enumerate(idx):
                w2c, source = r.track.pose(int(i))
                viewmat = torch.tensor(w2c, dtype=torch.float32, device=dev)
                s0 = time.perf_counter()
                face_out = r._raster({k: v[b] for k, v in face_g.items()}, viewmat, r.K, r.size)
                mouth_out = r._raster({k: v[b] for k, v in mouth_g.items()}, viewmat, r.K, r.size)
                _sync(dev)
                s1 = time.perf_counter()
                image = composite(face_out, mouth_out, r._under(source, Layers(), r.size))
                frame = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                s2 = time.perf_counter()
                writer.write(frame)
                s3 = time.perf_counter()
                raster, comp, enc = raster + s1 - s0, comp + s2 - s1, enc + s3 - s2
            if timed:
                times["audio_net"] += t1 - t
                times["deformation"] += t2 - t1
                times["rasterization"] += raster
                times["compositing"] += comp
                times["encoding"] += enc
                done += len(idx)
    per_frame_ms = {k: round(1000 * v / done, 3) for k, v in times.items()}
    render_s = sum(v for k, v in times.items() if k != "encoding")
    return {
        "device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "size": r.size, "gaussians": head.face.num_gaussians, "mouth_gaussians": head.mouth.num_gaussians,
        "frames_timed": done, "batch": batch, "encoders": list(r.encoders),
        "features_s_per_audio_s": round(feature_s / (len(samples) / 16000), 4),
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
