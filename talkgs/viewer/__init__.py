"""``talkgs view``: a local web viewer of a fitted subject, with audio-synchronised rendering.

The browser plays the audio; the page asks the server for the frame of the audio's current time;
the server renders it with ``talkgs.render.driver.TalkingRenderer`` and answers with a JPEG. See
docs/viewer.md. Importing this package is cheap: torch and the renderer load in ``ViewerEngine``.
"""

from talkgs.viewer.config import ViewerConfig as ViewerConfig

__all__ = ["ViewerConfig"]
