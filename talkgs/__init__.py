"""talkgs: photorealistic Gaussian-splatting talking heads from monocular video.

Importing the package is cheap: MediaPipe, gsplat's CUDA code, transformers and the viewer
are imported inside the functions that need them.
"""

from talkgs.errors import TalkgsError as TalkgsError
from talkgs.utils.threads import share_cores

# Before anything imports torch: OpenMP reads its spin count once, when torch loads it (talkgs.utils.threads).
share_cores()

__version__ = "0.1.0"

__all__ = ["TalkgsError", "__version__"]
