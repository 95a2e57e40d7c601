"""Lip sync of fitted subjects driven by new speech, next to the real footage's own (the ceiling).

    python tools/eval_lipsync.py --subject mel=subjA --subject phonemes=subjB --audio a.wav --audio b.wav \
        [--truth SUBJECT_DIR] [--out results.json] [--size PX]

Each subject renders each audio with ``talkgs render`` defaults (pose replay, natural blinks), and
``talkgs.eval.lipsync`` measures the render against the audio. ``--truth`` adds the subject's own
frames.mp4 with its audio.wav: the same metrics on real footage.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

KEYS = ("bilabial_closure_rate", "bilabial_count", "av_offset_frames", "mouth_energy_corr", "frames")


def main() -> None:
    from talkgs.data import schema
    from talkgs.eval.lipsync import lipsync_metrics
    from talkgs.render.driver import DriveConfig, render_speech

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--audio", action="append", required=True)
    p.add_argument("--truth", metavar="SUBJECT_DIR")
    p.add_argument("--size", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    if args.truth:
        root = Path(args.truth)
        report = lipsync_metrics(root / schema.FRAMES, root / schema.AUDIO)
        rows.append({"model": "real footage", "audio": "its own", **{k: report.get(k) for k in KEYS}})
        print(json.dumps(rows[-1]))
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.subject:
            name, subject = spec.split("=", 1)
            for audio in args.audio:
                video = Path(tmp) / f"{name}_{Path(audio).stem}.mp4"
                t = time.perf_counter()
                summary = render_speech(subject, audio, video, DriveConfig(size=args.size))
                seconds = time.perf_counter() - t
                report = lipsync_metrics(video, audio)
                rows.append({"model": name, "audio": Path(audio).name, **{k: report.get(k) for k in KEYS},
                             "render_fps": round(summary["frames"] / seconds, 1)})
                print(json.dumps(rows[-1]))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
