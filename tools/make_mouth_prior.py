"""Write talkgs/data/mouth_prior.npz: public-domain speakers' speech evidence and mouths, the speech model's prior.

    python tools/make_mouth_prior.py [--out talkgs/data/mouth_prior.npz]

For every public-domain clip of ../shared/data/video (``_pd_`` in the name: Obama and Reagan, which its README
allows copying into the project) it stores:

- ``<clip>.visemes`` [T, D] float16: the ``visemes`` encoder's evidence at ``PRIOR_EVIDENCE_HZ`` (word
  recognition, forced alignment and relative loudness over the whole clip, as ``talkgs prepare`` computes it),
  after the clip's own audio-video offset is corrected as ``talkgs eval --drive-ref`` corrects a reference;
- ``<clip>.cepstra`` [T, 13] float16: the ``cepstra`` encoder's features at the same times;
- ``<clip>.whisper`` [T', 512] float16: the ``whisper`` encoder's features at its own 50-Hz steps (block
  ``whisper_layer`` of Whisper base, the ``AudioConfig`` default; needs ``talkgs[whisper]``);
- ``<clip>.mouth`` [F, L, 3] float16: the canonical lip and jaw landmarks (``mouth_code.MOUTH_IDS``, metres)
  tracked at ``PRIOR_TRACK_FPS`` as ``talkgs render --drive`` tracks a driving video;
- ``cepstra_population`` [2, 13]: the mean and variance of all the clips' raw cepstra over their speech windows,
  which start every signal's running normalisation (``talkgs.audio.cepstra``).

``talkgs.model.mouth_code.load_prior`` samples both at a subject's frame rate when a fit pools them with the
subject's own frames (``MouthCodeConfig.prior``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "video"


def main() -> None:
    from talkgs.audio import cepstra, whisper
    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import _viseme_features, align_phones
    from talkgs.data import topology as topo
    from talkgs.model.mouth_code import MOUTH_IDS
    from talkgs.model.mouth_code import PRIOR_EVIDENCE_HZ as HZ
    from talkgs.model.mouth_code import PRIOR_TRACK_FPS as FPS
    from talkgs.model.mouth_code import PRIOR_WHISPER_HZ as WHISPER_HZ
    from talkgs.prepare.pipeline import track_face
    from talkgs.prepare.sync import energy_envelope, estimate_offset, shift_audio
    from talkgs.render.driver import read_speech
    from talkgs.utils import media

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "talkgs" / "data" / "mouth_prior.npz")
    args = p.parse_args()
    audio_cfg = AudioConfig()
    arrays: dict[str, np.ndarray] = {"evidence_hz": np.array(HZ), "track_fps": np.array(FPS),
                                     "whisper_layer": np.array(audio_cfg.whisper_layer)}
    raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for clip in sorted(SHARED.glob("*_pd_*.mp4")):
        canonical = track_face(clip, FPS)  # [F, 478, 3]
        upper, lower = topo.INNER_LIP_MID
        opening = np.linalg.norm(canonical[:, upper] - canonical[:, lower], axis=-1)
        samples = read_speech(clip)
        sr = media.SAMPLE_RATE
        offset = estimate_offset(opening, energy_envelope(samples, sr, len(opening), FPS), FPS, 8)
        samples = shift_audio(samples, offset.frames if offset.confident else 0, sr, FPS)
        times = np.arange(0.0, len(canonical) / FPS, 1.0 / HZ)
        evidence = _viseme_features(align_phones(samples)[0], samples, 0.0, times, sr)  # [T, D]
        arrays[f"{clip.stem}.visemes"] = evidence.astype(np.float16)
        steps = np.arange(0.0, len(canonical) / FPS, 1.0 / WHISPER_HZ)  # the encoder's own steps
        arrays[f"{clip.stem}.whisper"] = whisper.whisper_features(samples, steps, audio_cfg).astype(np.float16)
        arrays[f"{clip.stem}.mouth"] = canonical[:, list(MOUTH_IDS)].astype(np.float16)
        raw[clip.stem] = (*cepstra.raw_cepstra(samples, times, sr), times)
        print(f"{clip.name}: {len(canonical)} frames, audio offset {offset.frames} "
              f"({'applied' if offset.confident else 'not confident'})")
    speech = np.concatenate([c[cepstra.speech_windows(level, t)] for c, level, t in raw.values()])
    stats = (speech.mean(0), speech.var(0))
    arrays["cepstra_population"] = np.stack(stats).astype(np.float32)
    for stem, (c, level, t) in raw.items():
        arrays[f"{stem}.cepstra"] = cepstra.normalise(c, level, t, cepstra.new_state(stats)).astype(np.float16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
