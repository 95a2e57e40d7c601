"""Configuration of the speech features (the ``audio`` section of a prepare config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AudioConfig:
    encoders: tuple[str, ...] = ("mel", "phonemes", "visemes", "cepstra")
    """Audio features to compute: any of mel, phonemes, visemes, cepstra, hubert, wav2vec2. ``mel`` drives
    the direct audio path, ``visemes`` and ``cepstra`` the mouth-code path's speech model
    (``HeadConfig.drive``)."""
    hubert_model: str = "facebook/hubert-large-ls960-ft"
    """Hugging Face id or local folder of the HuBERT checkpoint (TalkingGaussian's default)."""
    wav2vec2_model: str = "facebook/wav2vec2-base-960h"
    """Hugging Face id or local folder of the wav2vec2 CTC checkpoint."""
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
