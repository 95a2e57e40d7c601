"""Configuration of the speech features (the ``audio`` section of a prepare config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AudioConfig:
    encoders: tuple[str, ...] = ("mel", "phonemes", "visemes", "cepstra", "whisper")
    """Audio features to compute: any of mel, phonemes, visemes, cepstra, whisper, hubert, wav2vec2. ``mel`` drives
    the direct audio path, ``visemes`` and ``cepstra`` the mouth-code path's speech model
    (``HeadConfig.drive``)."""
    hubert_model: str = "facebook/hubert-large-ls960-ft"
    """Hugging Face id or local folder of the HuBERT checkpoint (TalkingGaussian's default)."""
    wav2vec2_model: str = "facebook/wav2vec2-base-960h"
    """Hugging Face id or local folder of the wav2vec2 CTC checkpoint."""
    whisper_model: str = ""
    """Folder of Whisper weights for the ``whisper`` encoder (a CTranslate2 ``model.bin``, as faster-whisper's, or a
    transformers checkpoint). Empty: the ``TALKGS_WHISPER`` environment variable, then the Hugging Face cache
    (Systran/faster-whisper-base, openai/whisper-base), then the ``talkgs[whisper]`` extra's packages."""
    whisper_layer: int = 3
    """The Whisper encoder block whose output is the ``whisper`` feature (1 to 6 in Whisper base). Before
    rendering, across the 33 speakers of ../shared/data, a ridge regression of block k's output predicts the real
    mouth opening at a median 0.62, 0.70, 0.69, 0.66, 0.62, 0.59 for k = 1..6 (0.55, 0.60, 0.63, 0.61, 0.58, 0.53
    at lag 0; tools/research/probe_whisper.py layers); the anchor with the public-domain clips, scored on the 30
    other speakers: 0.68 for block 2 and 0.70 for block 3 (docs/lip_sync.md, tenth round). Block 3 runs half the
    encoder."""
    whisper_window_s: float = 30.0
    """Audio per encoder pass (at most Whisper's 30 s, the length it was trained on; shorter audio is padded to it
    as Whisper pads)."""
    whisper_overlap_s: float = 10.0
    """Overlap of consecutive windows over longer speech; every time takes the window where it sits most central,
    so it has at least half this much audio on both sides."""
    whisper_stream_context_s: float = 4.0
    """Audio before each block of frames that a stream encodes with Whisper (short stretches are not padded to
    30 s: each pass costs about 40 ms on 2 CPU cores instead of 0.46 s). Measured before rendering against 10
    speakers' real mouths (tools/research/probe_whisper.py --stream): 4 s and 8 s of context follow them at 0.713
    and 0.715 at a look-ahead of 0.5 s, 2 s at 0.702; offline 0.737."""
    whisper_stream_lookahead_s: float = 0.5
    """Default look-ahead of a Whisper stream past each block (``renderer.stream(lookahead_s=...)`` overrides it):
    at 1, 0.5 and 0.2 s the stream's features follow the real mouths at 0.725, 0.713 and 0.703."""
    local_files_only: bool = True
    """Load weights from the local cache or folder only; never download during prepare."""
    n_mels: int = 80
    """Bands of the log-mel encoder."""
    av_offset: str = "auto"
    """"auto" to estimate the audio-video offset and correct it, or a whole number of frames."""
    max_offset_frames: int = 8
    """Offsets searched by the estimator, in frames either way."""
    min_offset_corr: float = 0.1
    """"auto" corrects only an offset whose mouth-energy correlation reaches this ..."""
    min_offset_margin: float = 0.05
    """... and beats every other candidate peak by this much; otherwise the audio is left as it is
    (speech rhythm can give several peaks a few frames apart, as on short clips)."""

    def __post_init__(self) -> None:
        if self.whisper_layer < 1:
            raise ValueError(f"AudioConfig.whisper_layer must be >= 1, got {self.whisper_layer}")
        if not (0 < self.whisper_window_s <= 30 and 0 <= self.whisper_overlap_s < self.whisper_window_s):
            raise ValueError("AudioConfig needs whisper_window_s in (0, 30] (Whisper's longest input) and "
                             "whisper_overlap_s in [0, whisper_window_s)")
        if self.whisper_stream_context_s <= 0 or self.whisper_stream_lookahead_s < 0:
            raise ValueError("AudioConfig needs whisper_stream_context_s > 0 and whisper_stream_lookahead_s >= 0")
