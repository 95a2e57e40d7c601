"""The viewer's orbit camera: yaw, pitch, zoom and pan relative to the tracked view of each frame.

The camera stays attached to the tracked view, so the head keeps its natural motion while the
user looks at it from another side; all zeros (``Orbit()``) is exactly the tracked view.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from talkgs.errors import TalkgsError


@dataclass(frozen=True)
class Orbit:
    """Offsets of the viewer's camera from the tracked view."""

    yaw: float = 0.0
    """Degrees about the camera's vertical axis through the head centre (drag left-right)."""
    pitch: float = 0.0
    """Degrees about the camera's horizontal axis through the head centre (drag up-down)."""
    zoom: float = 1.0
    """Distance to the head centre divided by this (wheel); the head centre stays where it is in the image."""
    pan_x: float = 0.0
    """Image shift of the head in focal lengths (shift-drag): pixels = pan_x * fx."""
    pan_y: float = 0.0
    """As ``pan_x``, downwards."""

    @classmethod
    def from_json(cls, text: str | None) -> Orbit:
        """An orbit from the page's ``cam`` parameter, e.g. '{"yaw": 20, "zoom": 1.5}'; bad input raises."""
        if not text:
            return cls()
        try:
            values = json.loads(text)
            orbit = cls(**{k: float(v) for k, v in values.items()})
        except (ValueError, TypeError, AttributeError) as e:
            raise TalkgsError(f"bad camera {text[:80]!r}: {e}") from None
        if not all(math.isfinite(v) for v in (orbit.yaw, orbit.pitch, orbit.zoom, orbit.pan_x, orbit.pan_y)):
            raise TalkgsError("camera values must be finite")
        if not 0.05 <= orbit.zoom <= 20:
            raise TalkgsError(f"zoom must be between 0.05 and 20, got {orbit.zoom}")
        return orbit


def orbit_viewmat(w2c: np.ndarray, pivot: np.ndarray, orbit: Orbit) -> np.ndarray:
    """World-to-camera [4, 4] of ``orbit`` applied to the tracked view ``w2c`` [4, 4] about ``pivot`` [3].

    In camera space, a point p maps to R (p - c) + c / zoom + d / zoom (pan_x, pan_y, 0), with c the
    pivot in camera space and d its depth: rotating about c orbits the head, dividing c by the zoom
    moves the camera towards the head along the ray through its centre, and the pan is scaled by the
    depth so that it moves the image by the same number of pixels at any zoom.
    """
    w2c = np.asarray(w2c, np.float64)
    c = (w2c @ np.append(np.asarray(pivot, np.float64), 1.0))[:3]
    y, p = math.radians(orbit.yaw), math.radians(orbit.pitch)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    r = ry @ rx
    move = np.eye(4)
    move[:3, :3] = r
    move[:3, 3] = -r @ c + c / orbit.zoom + np.array([orbit.pan_x, orbit.pan_y, 0.0]) * c[2] / orbit.zoom
    return move @ w2c


def project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions [N, 2] of world ``points`` [N, 3] and whether each lies in front of the camera [N]."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    front = cam[:, 2] > 1e-6
    z = np.where(front, cam[:, 2], 1.0)
    uv = np.stack([K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]], 1)
    return uv, front
