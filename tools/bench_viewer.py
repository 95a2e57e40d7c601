"""Benchmark the viewer's render loop: the frames per second one tab can get from ``talkgs view``.

Times ``ViewerEngine.render`` (what GET /frame runs: the audio-driven deformation, rasterization,
compositing over the torso and background, JPEG encoding) on a fitted subject's own held-out clip,
frame after frame as a playing tab asks for them, in three cases:

- ``playing``: the audio plays, the camera rests: a new frame each time, full resolution;
- ``drag-paused``: the audio is paused and the camera is dragged: the orbit changes every frame, at
  ``moving_scale`` of the resolution, and the frame's deformation is reused;
- ``drag-playing``: both: a new frame and a new orbit each time, at ``moving_scale``;
- ``centres``: ``playing`` with the Gaussian centres drawn.

HTTP and the browser's JPEG decode are not included (about 1 ms at these sizes). Each case is warmed
up for 3 frames, then ``--frames`` frames are timed; the mean gives the FPS (a frame that deforms the next
``deform_ahead`` frames takes longer, the ones after it less), the median and 90th percentile the spread.

``--browser SECONDS`` measures what a user sees instead: ``talkgs view``'s server in this process, its
page in headless Chromium (``talkgs.viewer.browser``) playing the subject's own clip on a loop for that
long. Reported: the frames per second the page shows (its own read-out, sampled every half second, and
frames shown over the wall time), the page's audio-to-frame latency, and whether every frame shown is
the one of the audio time it asked for (frame = floor(t * fps)).

    OMP_NUM_THREADS=1 python tools/bench_viewer.py SUBJECT_DIR [--device cpu] [--size PX] [--json OUT]
    python tools/bench_viewer.py SUBJECT_DIR --size 256 --browser 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subject", metavar="SUBJECT_DIR")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--size", type=int, help="full viewer resolution (default: the viewer's default)")
    parser.add_argument("--frames", type=int, default=40, help="frames timed per case")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--browser", type=float, metavar="SECONDS", help="play the page in headless Chromium")
    args = parser.parse_args()
    if args.browser:
        results = browser_run(args.subject, args.device, args.size, args.browser)
        print(json.dumps(results, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return 0

    import torch

    from talkgs.viewer.camera import Orbit
    from talkgs.viewer.config import ViewerConfig
    from talkgs.viewer.engine import OWN_CLIP, FrameRequest, ViewerEngine

    cfg = ViewerConfig(device=args.device, size=args.size)
    engine = ViewerEngine(args.subject, cfg)
    clip = engine.clips[OWN_CLIP]
    fps = engine.fps
    orbit = lambda i: Orbit(yaw=2.0 * i, pitch=0.5 * i)  # noqa: E731
    cases = {
        "playing": lambda i: FrameRequest(t=i / fps),
        "drag-paused": lambda i: FrameRequest(t=0.5, scale=cfg.moving_scale, orbit=orbit(i)),
        "drag-playing": lambda i: FrameRequest(t=i / fps, scale=cfg.moving_scale, orbit=orbit(i)),
        "centres": lambda i: FrameRequest(t=i / fps, centres=True),
    }
    results = {"subject": str(args.subject), "device": engine.device, "size": engine.size,
               "gaussians": engine.info()["gaussians"], "torch_threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1min": os.getloadavg()[0], "cases": {}}
    for name, make in cases.items():
        for i in range(3):
            engine.render(make(i))
        times = []
        for i in range(args.frames):
            req = make(i % clip.num_frames)
            if engine.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            frame = engine.render(req)
            times.append(time.perf_counter() - t0)
        mean = statistics.fmean(times)
        results["cases"][name] = {"size": frame.size, "mean_ms": round(1000 * mean, 2),
                                  "median_ms": round(1000 * statistics.median(times), 2),
                                  "p90_ms": round(1000 * sorted(times)[int(0.9 * len(times))], 2),
                                  "fps": round(1 / mean, 1), "jpeg_kb": round(len(frame.jpeg) / 1024, 1)}
        r = results["cases"][name]
        print(f"{name:12s} {r['size']:4d} px  {r['mean_ms']:7.1f} ms mean  {r['median_ms']:7.1f} ms median  "
              f"{r['p90_ms']:7.1f} ms p90  {r['fps']:6.1f} FPS  ({r['jpeg_kb']} kB JPEG)", flush=True)
    print(f"device {results['device']}, {results['torch_threads']} torch thread(s), "
          f"load average {results['load_avg_1min']:.2f} before the run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


_SAMPLE = ("return {fps: viewer.stats.fps, latency: viewer.stats.latencyMs, shown: viewer.stats.shown, "
           "frame: viewer.stats.lastFrame, t: viewer.stats.lastT, size: viewer.stats.lastSize, "
           "clock: performance.now() / 1000}")


def browser_run(subject: str, device: str, size: int | None, seconds: float) -> dict:
    """The viewer's page in headless Chromium, playing the subject's own clip on a loop for ``seconds``."""
    import threading

    from talkgs.viewer.browser import headless_chromium
    from talkgs.viewer.config import ViewerConfig
    from talkgs.viewer.engine import OWN_CLIP, ViewerEngine
    from talkgs.viewer.server import ViewerServer

    cfg = ViewerConfig(port=0, device=device, size=size)
    server = ViewerServer(cfg)
    server.engine = ViewerEngine(subject, cfg)
    fps = server.engine.fps
    last = server.engine.clips[OWN_CLIP].num_frames - 1
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    driver = headless_chromium()
    try:
        driver.get(server.url)
        end = time.monotonic() + 60
        while not driver.execute_script("return viewer.stats.shown > 0 && audio.readyState >= 3"):
            if time.monotonic() > end:
                raise SystemExit("the page showed no frame within 60 s")
            time.sleep(0.1)
        driver.execute_script("audio.loop = true; audio.currentTime = 0; audio.play()")
        time.sleep(2.0)  # the read-outs average over the last 1-2 s
        samples, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(driver.execute_script(_SAMPLE))
            time.sleep(0.5)
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    shown = samples[-1]["shown"] - samples[0]["shown"]
    wall = samples[-1]["clock"] - samples[0]["clock"]
    in_sync = [s["frame"] == min(int(s["t"] * fps + 1e-6), last) for s in samples if s["t"] is not None]
    return {"subject": subject, "size": samples[-1]["size"], "device": server.engine.device,
            "seconds": round(wall, 1), "frames_shown_per_second": round(shown / wall, 1),
            "page_fps_median": statistics.median(s["fps"] for s in samples),
            "latency_ms_median": round(statistics.median(s["latency"] for s in samples if s["latency"] is not None), 1),
            "frames_matching_their_audio_time": f"{sum(in_sync)}/{len(in_sync)}",
            "cores": os.cpu_count(), "load_avg_1min_after": os.getloadavg()[0]}


if __name__ == "__main__":
    sys.exit(main())
