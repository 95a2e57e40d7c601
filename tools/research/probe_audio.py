"""How well can an audio net predict the mouth opening of a subject from its audio alone?

A cheap stand-in for a full fit when choosing audio features and window sizes: an ``AudioNet`` with a
linear read-out is trained to regress the tracked mouth opening (``signals.npz``) of the training
frames, and the correlation on held-out frames is reported, cross-validated over K contiguous blocks
of the clip (a 10-frame guard either side of each block keeps the windows from seeing it).

    python tools/research/probe_audio.py SUBJECT_DIR --variant mel:8:8 --variant mel:4:4 --variant mel,phonemes:4:4

A variant is ENCODERS:WINDOW:ATTENTION_FRAMES. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from talkgs.data.subject import Subject
from talkgs.model.audio_net import AudioNet, AudioNetConfig

GUARD = 10


def fold_split(num_frames: int, fold: int, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) frame indices of ``fold``: a contiguous test block, and the rest beyond a guard."""
    lo, hi = num_frames * fold // folds, num_frames * (fold + 1) // folds
    test = np.arange(lo + GUARD, hi - GUARD)
    train = np.concatenate([np.arange(0, max(lo - GUARD, 0)), np.arange(min(hi + GUARD, num_frames), num_frames)])
    return train, test


def probe(features: torch.Tensor, target: torch.Tensor, train: np.ndarray, test: np.ndarray, cfg: AudioNetConfig,
          steps: int, batch: int, lr: float, seed: int) -> tuple[float, float]:
    """(train, test) correlation of the predicted and tracked mouth opening."""
    torch.manual_seed(seed)
    tr, te = torch.as_tensor(train), torch.as_tensor(test)
    y = (target - target[tr].mean()) / target[tr].std()
    net = AudioNet(features.shape[-1], cfg)
    net.set_feature_stats(features[tr])
    readout = torch.nn.Linear(cfg.out_dim, 1)
    opt = torch.optim.Adam([*net.parameters(), *readout.parameters()], lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = tr[torch.randint(len(tr), (batch,), generator=gen)]
        loss = ((readout(net(features, idx))[:, 0] - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        corr = lambda i: float(np.corrcoef(readout(net(features, i))[:, 0].numpy(), y[i].numpy())[0, 1])  # noqa: E731
        return corr(tr), corr(te)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject")
    ap.add_argument("--variant", action="append", required=True, help="ENCODERS:WINDOW:ATTENTION, e.g. mel:4:4")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    subject = Subject(args.subject)
    target = torch.tensor(subject.signals["mouth_open"], dtype=torch.float32)
    print(f"{subject.root}: {subject.num_frames} frames, {args.folds} folds, {args.steps} steps of {args.batch}")
    print("| encoders | window | attention | train corr | held-out corr (mean +- std) | per fold |")
    print("|---|---|---|---|---|---|")
    for variant in args.variant:
        encoders, window, attention = variant.split(":")
        feats = torch.tensor(np.concatenate([np.asarray(subject.audio_features(e), np.float32)
                                             for e in encoders.split(",")], axis=-1))
        cfg = AudioNetConfig(window=int(window), attention_frames=int(attention))
        scores = np.array([probe(feats, target, *fold_split(subject.num_frames, k, args.folds), cfg, args.steps,
                                 args.batch, args.lr, args.seed + k) for k in range(args.folds)])
        print(f"| {encoders} | {window} | {attention} | {scores[:, 0].mean():.2f} | {scores[:, 1].mean():.2f} +- "
              f"{scores[:, 1].std():.2f} | {' '.join(f'{v:.2f}' for v in scores[:, 1])} |", flush=True)


if __name__ == "__main__":
    main()
