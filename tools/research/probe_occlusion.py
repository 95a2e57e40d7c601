"""What prepare's occlusion and camera checks find on real footage (docs/footage.md, "On real footage").

    python tools/research/probe_occlusion.py [--json docs/benchmarks/occlusion_real.json]

Every clip of ../shared/data (video/ and speakers/) is prepared with the tiny preset (128 px frames; the checks
themselves run on the source frames) into a temporary folder, and its report's ``occlusion`` and
``camera_motion`` are printed: on clean footage the occlusion check should find nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    from talkgs.prepare.config import PrepareConfig
    from talkgs.prepare.pipeline import prepare
    from talkgs.utils.config import load_section

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    clips = sorted((DATA / "video").glob("*.mp4")) + sorted((DATA / "speakers").glob("*.mp4"))
    if not clips:
        raise SystemExit(f"no clips in {DATA}")
    cfg = load_section(PrepareConfig, "tiny", "prepare")
    rows = []
    for clip in clips:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                report = prepare(clip, Path(tmp) / "s", cfg)
            except Exception as e:  # a clip prepare refuses is reported, not fatal
                rows.append({"clip": clip.stem, "error": str(e).splitlines()[0]})
                print(f"{clip.stem}: {rows[-1]['error']}", flush=True)
                continue
        occ, cam = report["occlusion"], report["camera_motion"]
        rows.append({"clip": clip.stem, "frames": report["frames"], "covered_frames": occ["frames"],
                     "mostly_covered": report["frames_mostly_covered"], "hand_frames": occ["hand_frames"],
                     "spans_s": occ["spans_s"], "max_head_fraction": occ["max_head_fraction"],
                     "camera_p95_px": cam["p95_px"], "camera_moving": cam["moving"]})
        print(f"{clip.stem}: {occ['frames']} of {report['frames']} frames covered {occ['spans_s']}, "
              f"hands in {occ['hand_frames']}, camera {cam['p95_px']} px/frame (moving: {cam['moving']})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": "python tools/research/probe_occlusion.py --json " + str(args.json),
                                         "results": rows}, indent=1))


if __name__ == "__main__":
    main()
