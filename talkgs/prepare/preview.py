"""The --preview outputs: an overlay video and a PNG contact sheet.

They show, at a glance, that tracking worked: landmarks on the face, label colours, the head axes
projected through the tracked camera, and the blink, mouth and pose traces over time.
"""

from __future__ import annotations

import cv2
import numpy as np

from talkgs.data import topology as topo
from talkgs.data.schema import Label
from talkgs.prepare.occlusion import runs

LABEL_COLOURS = {  # RGB
    Label.TORSO: (70, 130, 180),
    Label.NECK: (0, 200, 200),
    Label.HAIR: (160, 82, 45),
    Label.FACE: (255, 200, 150),
    Label.LIPS: (220, 20, 60),
    Label.MOUTH: (148, 0, 211),
    Label.EYES: (0, 255, 0),
    Label.OCCLUDED: (255, 235, 0),
}
TRACE_COLOURS = {  # RGB
    "blink_left": (0, 200, 255),
    "blink_right": (0, 120, 255),
    "mouth_open": (255, 60, 60),
    "yaw": (255, 200, 0),
    "pitch": (120, 255, 120),
    "roll": (255, 120, 255),
    "occluded": (255, 235, 0),
    "camera": (230, 230, 230),
}
#: Previews of small subjects are drawn at least this large so the landmarks stay readable.
MIN_DISPLAY_PX = 384
#: Length of the drawn head axes, in metres.
AXIS_M = 0.06
#: Seconds of trace shown either side of the current frame in the overlay video.
TRACE_WINDOW_S = 2.0
SHEET_TILES = (4, 3)  # columns, rows


def display_scale(size: int) -> int:
    return max(1, int(np.ceil(MIN_DISPLAY_PX / size)))


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3] colour image of a label map."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    for label, colour in LABEL_COLOURS.items():
        out[labels == label] = colour
    return out


def euler_deg(R: np.ndarray) -> np.ndarray:
    """[F, 3] (yaw, pitch, roll) in degrees of head-to-camera rotations [F, 3, 3]."""
    out = np.zeros((len(R), 3))
    for i, r in enumerate(R):
        pitch, yaw, roll = cv2.RQDecomp3x3(r)[0]
        out[i] = (yaw, pitch, roll)
    return out


def draw_overlay(frame: np.ndarray, labels: np.ndarray, points: np.ndarray, K: np.ndarray, R: np.ndarray,
                 t: np.ndarray) -> np.ndarray:
    """The frame with label colours, landmark contours and projected head axes, enlarged for display.

    Args:
        frame: uint8 [S, S, 3]; labels: uint8 [S, S]; points: [478, >=2] output pixels;
        K: [3, 3]; R: [3, 3] and t: [3] head-to-camera pose.
    """
    k = display_scale(frame.shape[0])
    tint = colour_labels(labels)
    mask = (labels != Label.BACKGROUND)[..., None]
    img = np.where(mask, (0.6 * frame + 0.4 * tint).astype(np.uint8), frame)
    img = cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    p = np.asarray(points)[:, :2] * k
    for contour in (topo.FACE_OVAL, topo.LIPS_OUTER, topo.LIPS_INNER, topo.LEFT_EYE, topo.RIGHT_EYE):
        poly = np.round((p[list(contour)] - 0.5) * 16).astype(np.int32)
        cv2.polylines(img, [poly], True, (255, 255, 255), 1, cv2.LINE_AA, shift=4)
    for i in topo.RIGID:
        cv2.circle(img, (int(p[i, 0] * 16), int(p[i, 1] * 16)), 2 * 16, (255, 255, 0), -1, cv2.LINE_AA, shift=4)
    axes = np.array([[0, 0, 0], [AXIS_M, 0, 0], [0, AXIS_M, 0], [0, 0, AXIS_M]])
    cam = axes @ R.T + t
    uv = (cam @ K.T)[:, :2] / cam[:, 2:3] * k
    o = tuple(int(v * 16) for v in uv[0])
    for end, colour in zip(uv[1:], ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        cv2.line(img, o, tuple(int(v * 16) for v in end), colour, 2, cv2.LINE_AA, shift=4)
    return img


def draw_traces(series: dict[str, np.ndarray], width: int, height: int, cursor: int | None = None,
                window: tuple[int, int] | None = None, marks: list[int] = (), shade: tuple[int, int] | None = None,
                ) -> np.ndarray:
    """A plot panel uint8 [height, width, 3] of [F] series, each scaled to its own range.

    Args:
        cursor: frame drawn as a vertical line; window: frames [a, b) shown (all by default);
        marks: frames drawn as short ticks (cuts); shade: frames [a, b) shaded (the test split).
    """
    panel = np.full((height, width, 3), 24, np.uint8)
    n = len(next(iter(series.values())))
    a, b = window if window else (0, n)
    x_of = lambda i: (i - a) / max(b - a - 1, 1) * (width - 1)  # noqa: E731
    if shade:
        x0, x1 = int(x_of(max(shade[0], a))), int(x_of(min(shade[1], b) - 1))
        if x1 > x0:
            panel[:, x0:x1] = 48
    pad = 4
    for name, y in series.items():
        seg = np.asarray(y, np.float64)
        lo, hi = np.nanpercentile(seg, 1), np.nanpercentile(seg, 99)
        idx = np.arange(max(a, 0), min(b, n))
        if len(idx) < 2:
            continue
        yy = (seg[idx] - lo) / max(hi - lo, 1e-9)
        pts = np.stack([[x_of(i) for i in idx], pad + (1 - np.clip(yy, 0, 1)) * (height - 2 * pad)], -1)
        cv2.polylines(panel, [np.round(pts * 16).astype(np.int32)], False, TRACE_COLOURS.get(name, (200, 200, 200)),
                      1, cv2.LINE_AA, shift=4)
    for m in marks:
        if a <= m < b:
            cv2.line(panel, (int(x_of(m)), 0), (int(x_of(m)), height // 4), (255, 255, 255), 1)
    if cursor is not None and a <= cursor < b:
        cv2.line(panel, (int(x_of(cursor)), 0), (int(x_of(cursor)), height - 1), (255, 255, 255), 1)
    x = 6
    for name in series:
        cv2.putText(panel, name, (x, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    TRACE_COLOURS.get(name, (200, 200, 200)), 1, cv2.LINE_AA)
        x += 8 * len(name) + 10
    return panel


def covered_tiles(occluded: np.ndarray, most: int) -> list[int]:
    """The most covered frame of each of the ``most`` longest stretches of frames with ``occluded`` [F] > 0."""
    spans = sorted(runs(np.asarray(occluded) > 0), key=lambda ab: ab[0] - ab[1])[:most]
    return sorted(int(a + np.argmax(occluded[a:b])) for a, b in spans)


class PreviewWriter:
    """Builds the overlay video frame by frame and keeps the tiles of the contact sheet."""

    def __init__(self, path, size: int, fps: float, num_frames: int, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                 signals: dict[str, np.ndarray], occluded: np.ndarray | None = None):
        """``occluded``: [F] share of the face something covers (``talkgs.prepare.occlusion``): traced, and the most
        covered frame of each of the longest covered stretches gets a tile of the contact sheet."""
        from talkgs.utils.media import VideoWriter

        self.k = display_scale(size)
        self.disp = size * self.k
        self.K, self.R, self.t = K, R, t
        angles = euler_deg(R)
        self.series = {
            "blink_left": signals["blink_left"],
            "blink_right": signals["blink_right"],
            "mouth_open": signals["mouth_open"],
            "yaw": angles[:, 0],
            "pitch": angles[:, 1],
            "roll": angles[:, 2],
        }
        self.fps = fps
        self.trace_h = self.disp // 3 - (self.disp // 3) % 2
        cols, rows = SHEET_TILES
        shown = covered_tiles(occluded, cols * rows // 3) if occluded is not None else []
        if shown:
            self.series["occluded"] = occluded
        even = np.linspace(0, num_frames - 1, cols * rows - len(shown)).round().astype(int).tolist()
        self.tile_idx = set(even) | set(shown)
        self.tiles: dict[int, np.ndarray] = {}
        self.writer = VideoWriter(path, (2 * self.disp, self.disp + self.trace_h), fps, crf=20, preset="veryfast",
                                  pix_fmt="yuv420p")

    def add(self, i: int, frame: np.ndarray, labels: np.ndarray, points: np.ndarray) -> None:
        over = draw_overlay(frame, labels, points, self.K, self.R[i], self.t[i])
        if i in self.tile_idx:
            self.tiles[i] = over.copy()
        seg = cv2.resize(colour_labels(labels), (self.disp, self.disp), interpolation=cv2.INTER_NEAREST)
        cv2.putText(over, f"{i:5d}  {i / self.fps:6.2f} s", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        half = int(TRACE_WINDOW_S * self.fps)
        traces = draw_traces(self.series, 2 * self.disp, self.trace_h, cursor=i, window=(i - half, i + half + 1))
        self.writer.write(np.concatenate([np.concatenate([over, seg], 1), traces], 0))

    def finish(self, sheet_path, cuts: list[int], test_range: tuple[int, int], title: str,
               camera: np.ndarray | None = None) -> None:
        """``camera``: [F] the background's shift from the previous frame in pixels (``flow.CameraMotion``), traced
        with the pose."""
        self.writer.close()
        cols, rows = SHEET_TILES
        tile = min(self.disp, 256)
        grid = np.zeros((rows * tile, cols * tile, 3), np.uint8)
        for n, i in enumerate(sorted(self.tiles)):
            r, c = divmod(n, cols)
            img = cv2.resize(self.tiles[i], (tile, tile), interpolation=cv2.INTER_AREA)
            cv2.putText(img, f"{i / self.fps:.1f} s", (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
            grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = img
        w = grid.shape[1]
        eyes = draw_traces({k: self.series[k] for k in ("blink_left", "blink_right", "mouth_open", "occluded")
                            if k in self.series}, w, 110,
                           marks=cuts, shade=test_range)
        traces = {k: self.series[k] for k in ("yaw", "pitch", "roll")}
        if camera is not None:
            traces["camera"] = camera
        pose = draw_traces(traces, w, 110, marks=cuts, shade=test_range)
        head = np.full((26, w, 3), 0, np.uint8)
        cv2.putText(head, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        sheet = np.concatenate([head, grid, eyes, pose], 0)
        cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
