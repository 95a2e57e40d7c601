"""The speech model with the public-domain prior (``head.code.prior``) per ``prior_weight``, before rendering.

    python tools/research/probe_mouth_prior.py [--weights 0,0.25,0.5,1] [--cache outputs/evidence]

For the demo and the anchor subjects as ``tools/bench_lip_sync.py`` prepares them (WORK/<subject>_code, with the
``visemes`` features), fits the mouth code on the training frames and the speech model with the prior at each
weight, and reports the predicted opening's correlation with the tracked one on the held-out split, and with the
real mouths of the speakers that have no public-domain clip (their evidence from
``tools/research/probe_mouth_evidence.py``'s cache, best lag within +-5 frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# bench_lip_sync, imported below, lives one folder up in tools/.
sys.path.append(str(ROOT / "tools"))


def main() -> None:
    import torch
    from bench_lip_sync import PRIOR_SPEAKERS, longest_clips
    from probe_mouth_evidence import _collect

    from talkgs.data.subject import Subject
    from talkgs.eval.drive_ref import aperture_correlation
    from talkgs.model.mouth_code import MouthBasis, MouthCodeConfig, SpeechToCode, load_prior

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="0,0.25,0.5,1")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench256")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "evidence")
    args = p.parse_args()
    others = {s: _collect(c, args.cache) for s, c in longest_clips(("video",)).items()
              if s not in PRIOR_SPEAKERS | {"anchor"}}
    for name in ("demo", "anchor"):
        subject = Subject(args.work / f"{name}_code")
        basis = MouthBasis(MouthCodeConfig())
        basis.fit(subject.canonical_landmarks[subject.train_indices])
        codes = basis.encode(subject.canonical_landmarks)
        visemes = torch.tensor(np.asarray(subject.audio_features("visemes")))
        prior = [(torch.from_numpy(e), basis.transfer_mouth(m)) for e, m in load_prior(subject.fps)]
        train, test = torch.as_tensor(subject.train_indices), torch.as_tensor(subject.test_indices)
        for w in (float(x) for x in args.weights.split(",")):
            model = SpeechToCode(visemes.shape[-1], MouthCodeConfig(prior=w > 0, prior_weight=w))
            model.fit(visemes, codes, train, prior=prior if w > 0 else None)
            held_out = np.corrcoef(basis.opening(model(visemes, test)).numpy(), basis.opening(codes[test]).numpy())
            # The cache holds each clip's evidence at 25 fps, averaged over a frame's two steps.
            cross = [aperture_correlation(basis.opening(model(e, torch.arange(len(e)))).numpy(), d["ref"], 5)[0]
                     for d in others.values()
                     for e in [torch.tensor(np.repeat(d["visemes"][:, None], 2, 1), dtype=torch.float32)]]
            print(f"{name} ({subject.fps:g} fps) prior_weight {w:g}: held-out opening {held_out[0, 1]:.3f}, "
                  f"{len(cross)} other speakers (median) {np.median(cross):.3f}", flush=True)


if __name__ == "__main__":
    main()
