"""Where a fitted model's bytes go, and what the compact file (float16 tensors, WebP layers) changes (issue 29).

    python tools/bench_model_size.py SUBJECT_DIR... [--frames 100] [--json docs/benchmarks/model_size.json]

Each SUBJECT_DIR is a fitted subject whose fit/model.safetensors was written in float32 with PNG layers (model
format 1, talkgs before issue 29; its fit/checkpoint.pt holds the same float32 head otherwise). The tool writes the
same head, replay data and layers as the compact file of format 2 to a temporary folder and reports, for both:
the bytes per part (torso layers, background, face and mouth Gaussians split into positions and the rest, hash
grids, the other tensors, replay data), and, rendered from each file, the held-out frames as ``talkgs eval`` draws
them (PSNR against the real frames) and ``--frames`` frames of the subject's own audio as ``talkgs render`` draws
them (the replay run's stored torso layers under them); between the two files' frames, the 99th percentile and
the largest difference in levels of 255.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def part_of(key: str) -> str:
    if key.startswith("layers.torso"):
        return "torso layers"
    if key.startswith("layers."):
        return "background plate"
    if key.startswith("replay."):
        return "replay data"
    for branch in ("face", "mouth"):
        if key.startswith(f"head.{branch}.params."):
            return f"{branch} Gaussians: positions" if key.endswith(".means") else f"{branch} Gaussians: the rest"
    if ".encoding." in key:
        return "hash grids"
    return "other tensors (MLPs, speech model)"


def breakdown(path: Path) -> dict[str, float]:
    from safetensors import safe_open

    sizes: Counter = Counter()
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            t = f.get_slice(key)
            itemsize = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1}[t.get_dtype()]
            sizes[part_of(key)] += int(np.prod(t.get_shape(), dtype=np.int64)) * itemsize
    return {k: round(v / 2**20, 3) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])}


def renders(model, frames, count: int) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    import torch

    from talkgs.eval.evaluate import render_frame
    from talkgs.model.losses import psnr
    from talkgs.render.driver import DriveConfig, TalkingRenderer
    from talkgs.utils import media

    held, scores = [], []
    with torch.no_grad():
        for i in frames.test_indices:
            batch, out = render_frame(model, frames, int(i))
            image = out.image[0].clamp(0, 1)
            scores.append(float(psnr(image, batch.image)))
            held.append(media.to_uint8(image))
        renderer = TalkingRenderer(model, DriveConfig(batch=8), str(frames.device))
        indices = np.arange(min(count, frames.features.shape[0]))
        speech = []
        for a in range(0, len(indices), 8):
            speech += renderer.render_batch(frames.features, indices[a:a + 8])
    return held, speech, scores


def measure(root: Path, count: int) -> dict:
    from talkgs.data import schema
    from talkgs.data.frames import SubjectFrames
    from talkgs.data.subject import Subject
    from talkgs.model.fitted import FittedModel, encode_layer, load_model

    path = root / schema.MODEL
    old = load_model(path)
    if old.header["format_version"] != 1:
        raise SystemExit(f"{path} is already format {old.header['format_version']}: give a float32 format-1 fit")
    frames = SubjectFrames(Subject(root), old.resolution, "cpu", old.encoders, tuple(old.head.cfg.expression),
                           old.neck_extension, old.layer_background)
    with tempfile.TemporaryDirectory() as tmp:
        compact_path = Path(tmp) / "compact.safetensors"
        header = {**old.header, "format_version": 2}
        FittedModel(old.head, header, old.replay, encode_layer(old.background()),
                    {int(f): encode_layer(old.torso(int(f))) for f in old.torso_frames}).save(compact_path)
        compact = load_model(compact_path)
        row = {"subject": root.name, "resolution": old.resolution, "gaussians": old.header["gaussians"],
               "mouth_gaussians": old.header["mouth_gaussians"], "torso_layers": len(old.torso_frames),
               "mb_before": round(path.stat().st_size / 2**20, 2),
               "mb_after": round(compact_path.stat().st_size / 2**20, 2),
               "parts_before": breakdown(path), "parts_after": breakdown(compact_path)}
        held_a, speech_a, psnr_a = renders(old, frames, count)
        held_b, speech_b, psnr_b = renders(compact, frames, count)
    row["held_out_psnr_before"] = round(float(np.mean(psnr_a)), 4)
    row["held_out_psnr_after"] = round(float(np.mean(psnr_b)), 4)
    for name, a, b in (("held_out", held_a, held_b), ("speech", speech_a, speech_b)):
        diff = np.abs(np.stack(a).astype(int) - np.stack(b).astype(int))
        row[f"{name}_frames"] = len(a)
        row[f"{name}_diff_p99"] = float(np.percentile(diff, 99))
        row[f"{name}_diff_max"] = int(diff.max())
        row[f"{name}_pixels_changed"] = round(float((diff > 0).mean()), 4)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", nargs="+", type=Path)
    p.add_argument("--frames", type=int, default=100, help="frames of the subject's own audio rendered from each file")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    for root in args.subjects:
        rows.append(measure(root, args.frames))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "python tools/bench_model_size.py " + " ".join(sys.argv[1:]),
                                         "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
