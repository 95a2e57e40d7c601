"""Close-ups of the mouth on held-out frames: ground truth | fitted head without motion | with motion.

    python tools/research/mouth_strip.py SUBJECT_DIR -o docs/images/mouth_strip.png [--frames 8] [--zoom 4]

The frames are spread over the held-out split's range of mouth opening (closed to widest), so the strip
shows whether the model opens the mouth when the speaker does. Crops are centred on the tracked lips.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from talkgs.data import topology as topo
from talkgs.eval.evaluate import load_fitted, render_frame
from talkgs.utils.media import to_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--zoom", type=int, default=4)
    args = ap.parse_args()
    model, ctx = load_fitted(args.subject, "cpu")
    subject = ctx.subject
    test = ctx.test_indices
    order = test[np.argsort(subject.signals["mouth_open"][test], kind="stable")]
    picks = order[np.linspace(0, len(order) - 1, args.frames).round().astype(int)]
    res = ctx.resolution
    half = max(4, round(0.11 * res))  # the lips span about a fifth of the frame at the head's framing
    columns = []
    with torch.no_grad():
        for i in picks:
            batch, moving = render_frame(model, ctx, int(i))
            still = render_frame(model, ctx, int(i), motion=False)[1]
            lips = subject.landmarks[int(i), list(topo.LIPS_OUTER), :2].mean(0) * res / subject.size
            x0 = int(np.clip(round(lips[0]) - half, 0, res - 2 * half))
            y0 = int(np.clip(round(lips[1]) - half, 0, res - 2 * half))
            tiles = [to_uint8(batch.image), to_uint8(still.image[0]), to_uint8(moving.image[0])]
            crops = [cv2.resize(t[y0:y0 + 2 * half, x0:x0 + 2 * half], None, fx=args.zoom, fy=args.zoom,
                                interpolation=cv2.INTER_NEAREST) for t in tiles]
            columns.append(np.concatenate(crops, 0))
            columns.append(np.full((columns[-1].shape[0], 2, 3), 255, np.uint8))
    strip = np.concatenate(columns[:-1], 1)
    cv2.imwrite(args.output, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    print(f"{args.output}: frames {', '.join(str(int(i)) for i in picks)} (rows: truth, no motion, motion)")


if __name__ == "__main__":
    main()
