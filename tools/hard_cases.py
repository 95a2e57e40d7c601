"""Film-like hard cases made from a clean talking-head video (issue 28): what phone footage does to a fit.

    python tools/hard_cases.py assets/obama2010_pd_en_20s_256.mp4 outputs/hard

writes, next to each other, with the source's soundtrack:

- ``occluder.mp4``: a hand-shaped, skin-toned occluder rises over the lower face and leaves again, in
  ``OCCLUDED_SPANS`` (fractions of the clip, all inside the training part: the held-out frames stay clean, so
  the fit is judged on the face, not on the hand). ``occluder_mask.npz`` holds the pasted mask of every frame
  (what prepare should find).
- ``sleeve.mp4``: a forearm in a red-orange sleeve sweeps over the forehead and eyes in the same stretches (the
  colour of a hoodie, nothing like skin); ``sleeve_mask.npz`` as above.
- ``logo.mp4``: a red and orange graphic on the clothes and a watermark in a corner, every frame.
- ``handheld.mp4``: the frame zoomed 8 % and shifted by a smooth random walk of up to 5 % of its side per frame:
  the camera's own motion, the background and torso moving with it.

The tests paste the same occluder (``paste_hand``) into a few frames of the demo clip.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talkgs.utils import media  # noqa: E402

#: Stretches of the clip (fractions of its length) in which the hand covers the face: inside the first 10/11,
#: which ``talkgs prepare`` trains on.
OCCLUDED_SPANS = ((0.10, 0.16), (0.35, 0.42), (0.62, 0.68))
#: The hand's colour (RGB): a lighter skin tone than the demo subject's, as most hands in front of a face are
#: lit differently from it.
HAND_RGB = (226, 170, 138)


def hand_mask(size: int, cx: float, cy: float, scale: float, angle_deg: float = -15.0) -> np.ndarray:
    """float32 [size, size] in [0, 1]: an open hand (palm, four fingers, thumb) centred on the palm at (cx, cy)
    pixels, its palm ``scale`` pixels wide, fingers up, rotated by ``angle_deg``; edges anti-aliased."""
    up = 4  # drawn 4x larger, then reduced: soft edges like a real, slightly blurred hand
    canvas = np.zeros((size * up, size * up), np.uint8)
    s = scale * up
    c = np.array([cx, cy]) * up
    rot = np.deg2rad(angle_deg)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    at = lambda dx, dy: tuple(np.round(c + r @ np.array([dx, dy]) * s).astype(int))  # noqa: E731
    cv2.ellipse(canvas, at(0, 0), (int(0.5 * s), int(0.6 * s)), angle_deg, 0, 360, 255, -1)
    for dx, length in ((-0.36, 0.75), (-0.12, 0.85), (0.12, 0.8), (0.35, 0.65)):
        width = int(0.2 * s)
        cv2.line(canvas, at(dx, -0.4), at(dx * 1.1, -0.4 - length), 255, width)
        cv2.circle(canvas, at(dx * 1.1, -0.4 - length), width // 2, 255, -1)
    cv2.line(canvas, at(0.4, 0.15), at(0.85, -0.2), 255, int(0.22 * s))
    cv2.line(canvas, at(-0.2, 0.4), at(-0.25, 2.0), 255, int(0.8 * s))  # the wrist and forearm, out of the frame
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def paste_hand(frame: np.ndarray, progress: float) -> tuple[np.ndarray, np.ndarray]:
    """(the frame with the hand pasted, its mask [H, W] bool) at ``progress`` in [0, 1] through an occlusion:
    the hand rises from below the frame over the mouth and cheek and falls back. ``frame`` RGB uint8, square."""
    size = frame.shape[0]
    rise = np.sin(np.pi * np.clip(progress, 0, 1))  # 0 -> 1 -> 0
    cx, cy = 0.42 * size, (1.15 - 0.5 * rise) * size
    alpha = hand_mask(size, cx, cy, 0.3 * size)
    shade = np.linspace(1.08, 0.85, size, dtype=np.float32)[:, None, None]  # lit from above
    hand = np.clip(np.array(HAND_RGB, np.float32) * shade, 0, 255)
    out = frame.astype(np.float32) * (1 - alpha[..., None]) + hand * alpha[..., None]
    return np.round(out).astype(np.uint8), alpha > 0.5


#: The sleeve's colour (RGB): the red-orange of the phone video's hoodie.
SLEEVE_RGB = (222, 84, 36)


def paste_sleeve(frame: np.ndarray, progress: float) -> tuple[np.ndarray, np.ndarray]:
    """(the frame with a sleeved forearm pasted, its mask [H, W] bool) at ``progress`` in [0, 1]: it comes in from
    the right over the forehead and eyes and goes back."""
    size = frame.shape[0]
    reach = np.sin(np.pi * np.clip(progress, 0, 1))  # 0 -> 1 -> 0
    canvas = np.zeros((size * 4, size * 4), np.uint8)
    tip = np.array([(1.05 - 0.55 * reach) * size, 0.3 * size]) * 4
    elbow = np.array([1.4 * size, 0.55 * size]) * 4
    cv2.line(canvas, tuple(tip.astype(int)), tuple(elbow.astype(int)), 255, int(0.2 * size * 4))
    cv2.circle(canvas, tuple(tip.astype(int)), int(0.1 * size * 4), 255, -1)
    alpha = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    shade = np.linspace(1.1, 0.8, size, dtype=np.float32)[:, None, None]
    sleeve = np.clip(np.array(SLEEVE_RGB, np.float32) * shade, 0, 255)
    out = frame.astype(np.float32) * (1 - alpha[..., None]) + sleeve * alpha[..., None]
    return np.round(out).astype(np.uint8), alpha > 0.5


def draw_logo(frame: np.ndarray) -> np.ndarray:
    """The frame with a red and orange graphic on the clothes (lower right) and a watermark (upper left)."""
    out = frame.copy()
    size = frame.shape[0]
    centre = (int(0.8 * size), int(0.92 * size))
    cv2.circle(out, centre, int(0.07 * size), (245, 120, 25), -1, cv2.LINE_AA)
    star = np.array([[np.cos(a), np.sin(a)] for a in np.linspace(-np.pi / 2, 1.5 * np.pi, 6)[:5]])
    pts = (np.array(centre) + 0.05 * size * star[[0, 2, 4, 1, 3]]).astype(np.int32)
    cv2.fillPoly(out, [pts], (205, 25, 30), cv2.LINE_AA)
    mark = out.copy()
    cv2.putText(mark, "talk", (int(0.03 * size), int(0.09 * size)), cv2.FONT_HERSHEY_SIMPLEX, size / 400,
                (255, 255, 255), max(1, size // 200), cv2.LINE_AA)
    return cv2.addWeighted(mark, 0.55, out, 0.45, 0)


def handheld_path(frames: int, fps: float, seed: int = 0) -> np.ndarray:
    """[F, 2] the camera's shift (fractions of the side) per frame: a sum of slow sines, as a hand holds a
    phone (0.2-1.5 Hz), at most 0.05."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    path = np.zeros((frames, 2))
    for _ in range(4):
        f, phase = rng.uniform(0.2, 1.5, 2), rng.uniform(0, 2 * np.pi, 2)
        path += np.sin(2 * np.pi * f * t[:, None] + phase) * rng.uniform(0.3, 1.0, 2)
    return 0.05 * path / np.abs(path).max(0)


def shake(frame: np.ndarray, shift: np.ndarray, zoom: float = 1.08) -> np.ndarray:
    size = frame.shape[0]
    m = np.array([[zoom, 0, (1 - zoom) * size / 2 + shift[0] * size],
                  [0, zoom, (1 - zoom) * size / 2 + shift[1] * size]])
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make(source: Path, out: Path) -> None:
    info = media.probe_video(source)
    if info.width != info.height:
        raise SystemExit(f"{source}: the hard cases are made from a square clip, got {info.width}x{info.height}")
    size, fps = info.width, info.fps
    frames = list(media.read_frames(source, (size, size), fps=fps))
    n = len(frames)
    out.mkdir(parents=True, exist_ok=True)
    spans = [(int(a * n), int(b * n)) for a, b in OCCLUDED_SPANS]
    path = handheld_path(n, fps)
    masks = {name: np.zeros((n, size, size), bool) for name in ("occluder", "sleeve")}
    writers = {name: media.VideoWriter(out / f"{name}.tmp.mp4", (size, size), fps, crf=14, preset="veryfast",
                                       pix_fmt="yuv420p") for name in ("occluder", "sleeve", "logo", "handheld")}
    for i, frame in enumerate(frames):
        occluded = sleeved = frame
        for a, b in spans:
            if a <= i < b:
                occluded, masks["occluder"][i] = paste_hand(frame, (i - a + 0.5) / (b - a))
                sleeved, masks["sleeve"][i] = paste_sleeve(frame, (i - a + 0.5) / (b - a))
        writers["occluder"].write(occluded)
        writers["sleeve"].write(sleeved)
        writers["logo"].write(draw_logo(frame))
        writers["handheld"].write(shake(frame, path[i]))
    for name, w in writers.items():
        w.close()
        media.mux_audio(out / f"{name}.tmp.mp4", source, out / f"{name}.mp4")
        (out / f"{name}.tmp.mp4").unlink()
    for name, m in masks.items():
        np.savez_compressed(out / f"{name}_mask.npz", mask=m, fps=fps)
    print(f"wrote {', '.join(f'{k}.mp4' for k in writers)} ({n} frames, {size} px) and the masks to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a square talking-head clip with sound (e.g. the demo clip)")
    ap.add_argument("out", type=Path, help="folder for the hard cases")
    args = ap.parse_args()
    make(args.source, args.out)


if __name__ == "__main__":
    main()
