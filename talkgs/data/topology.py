"""Index sets of MediaPipe Face Mesh's 478 landmarks (468 mesh points + 2 x 5 iris points).

The ordered contours are MediaPipe's FACEMESH_* edge sets walked into polygons (a test checks they
still match the installed MediaPipe). "Left" and "right" are the subject's own sides, as in
MediaPipe: the subject's right eye appears on the image's left.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LIPS_OUTER = (0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61, 185, 40, 39, 37)
LIPS_INNER = (13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78, 191, 80, 81, 82)
LEFT_EYE = (249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466, 263)
RIGHT_EYE = (7, 33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163)
LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER = 473, 468
LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)

# Lower jaw from the right jaw angle over the chin to the left one (a slice of FACE_OVAL). The head
# and body are split along it, held level beyond the jaw angles so that the ear lobes, which hang
# below the ear's attachment, stay with the head.
LOWER_JAW = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397)
CHIN = 152
# The front of the chin (the middle five points of LOWER_JAW): it moves with the mandible, as the lower
# teeth do; the jaw angles near the hinge barely move.
CHIN_FRONT = (176, 148, 152, 377, 400)
FOREHEAD = 10

# Eye corners and lid pairs for the eye-openness ratio: (outer, inner) and (upper, lower) pairs.
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (263, 362)
RIGHT_LID_PAIRS = ((160, 144), (159, 145), (158, 153))
LEFT_LID_PAIRS = ((387, 373), (386, 374), (385, 380))
MOUTH_CORNERS = (61, 291)
INNER_LIP_MID = (13, 14)

# Points that move with the skull, not with speech or expression: forehead, nose bridge and
# ridge, eye corners, cheekbones and the area under the eyes. Lips, jaw, eyelids, brows and the
# silhouette-prone temples are left out.
RIGID = (
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4,          # midline: forehead to nose tip
    108, 337, 109, 338, 67, 297, 69, 299,            # forehead
    33, 133, 362, 263,                               # eye corners
    116, 345, 117, 346, 118, 347, 123, 352,          # cheekbones
    50, 280, 101, 330, 36, 266, 100, 329,            # under the eyes, beside the nose
    122, 351, 188, 412,                              # nose root sides
)

# Skin points on the nose and cheeks, none of them in RIGID: optical flow at these points checks the
# tracked head motion on data the tracker never saw (flow.MotionCheck).
MOTION_CHECK = (
    104, 333, 68, 298, 3, 248, 196, 419, 198, 420, 174, 399, 217, 437, 51, 281, 45, 275, 220, 440,
    134, 363, 114, 343, 128, 357, 126, 355, 47, 277, 111, 340, 119, 348, 120, 349, 121, 350, 142, 371,
)


def polygon(points: np.ndarray, contour: tuple[int, ...]) -> np.ndarray:
    """The [len(contour), 2] polygon of ``contour`` from landmarks ``points`` [478, >=2]."""
    return np.asarray(points)[list(contour), :2]
