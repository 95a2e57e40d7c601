"""Ablation of the head tracker on a prepared subject, measured against optical flow.

For each variant (MediaPipe landmarks alone or fused with KLT flow; pose smoothing on or off),
the tracker runs again on the subject's saved landmarks. The variants are then compared on:
- **motion error:** the mean disagreement, in output pixels, between the frame-to-frame motion that
  the poses predict and the KLT optical flow at ``topology.MOTION_CHECK``, skin points that no
  variant tracks;
- **rotation step:** the median and 99th percentile of the frame-to-frame rotation, in degrees;
- **RMSE:** the reprojection error against MediaPipe's rigid landmarks.

    python tools/research/eval_tracking.py demo_subject [more subjects ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import cv2
import numpy as np

from talkgs.data import Subject, schema
from talkgs.data import topology as topo
from talkgs.prepare.config import TrackingConfig
from talkgs.prepare.flow import klt
from talkgs.prepare.tracking import rotation_log, track_head

VARIANTS = {  # name: (use flow, smooth_rotation, smooth_translation)
    "landmarks only": (False, 0.0, 0.0),
    "landmarks, smoothed 4/4": (False, 4.0, 4.0),
    "flow": (True, 0.0, 0.0),
    "flow, rotation 8 (default)": (True, 8.0, 0.0),
    "flow, rotation 64": (True, 64.0, 0.0),
    "flow, smoothed 4/4": (True, 4.0, 4.0),
}


def _project(K, R, t, X):
    cam = X @ R.transpose(0, 2, 1) + t[:, None]
    uv = cam @ K.T
    return uv[..., :2] / uv[..., 2:]


def evaluate(root: str) -> None:
    s = Subject(root)
    pts = s.landmarks
    n = len(pts)
    fb = TrackingConfig().flow_fb_max_px
    report = json.loads((s.root / schema.REPORT).read_text())
    source_width = report["source"]["width"] * s.size / report["crop"][2]  # in output pixels
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in s.frames()]
    rigid, check = list(topo.RIGID), list(topo.MOTION_CHECK)
    flow = np.zeros((n, len(rigid), 2))
    valid = np.zeros((n, len(rigid)), bool)
    for i in range(1, n):
        flow[i], valid[i] = klt(gray[i - 1], gray[i], pts[i - 1, rigid, :2], fb)
    print(f"\n{root}: {n} frames at {s.size} px")
    print("| variant | motion error px | rotation step p50 / p99 deg | RMSE px |\n|---|---|---|---|")
    for name, (use_flow, lam_r, lam_t) in VARIANTS.items():
        cfg = dataclasses.replace(TrackingConfig(), smooth_rotation=lam_r, smooth_translation=lam_t)
        tr = track_head(pts[..., :2], pts, (s.K[0, 2], s.K[1, 2]), source_width, cfg,
                        flow=flow if use_flow else None, flow_valid=valid if use_flow else None)
        uv = _project(tr.K, tr.R, tr.t, tr.template[check])
        errors = []
        for i in range(n - 1):
            if i + 1 not in tr.cuts:
                d, v = klt(gray[i], gray[i + 1], uv[i], fb)
                errors.append(np.linalg.norm(d[v] - (uv[i + 1] - uv[i])[v], axis=-1))
        step = np.degrees(np.linalg.norm(rotation_log(tr.R[1:] @ tr.R[:-1].transpose(0, 2, 1)), axis=-1))
        step = np.delete(step, [c - 1 for c in tr.cuts])
        print(f"| {name} | {np.concatenate(errors).mean():.3f} | {np.median(step):.2f} / "
              f"{np.percentile(step, 99):.2f} | {tr.rmse_px:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subjects", nargs="+")
    args = ap.parse_args()
    print("command: python " + " ".join(sys.argv))
    for root in args.subjects:
        evaluate(root)


if __name__ == "__main__":
    main()
