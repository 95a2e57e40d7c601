"""Whisper as speech evidence for the mouth, before any rendering: which block, which regression, what a stream costs.

    python tools/research/probe_whisper.py layers [--protocol loso|prior] [--pca 128] [--window 5] [--ridge 10]
    python tools/research/probe_whisper.py stream [--every 3] [--settings 4,0.5 8,0.5 4,0.2]
    python tools/research/probe_whisper.py speech [--work outputs/w] [--ridges 100,300,1000] [--windows 3,5]

Every clip of ../shared/data (video/ and speakers/: 37 clips, 33 people) is read once and cached
(``--cache``, default outputs/whisper_evidence/<clip>.npz): the real mouth opening (MediaPipe, 25 fps,
``talkgs.eval.lipsync.mouth_openings``) with the clip's own audio-video offset corrected as ``talkgs eval
--drive-ref`` corrects it, the ``visemes`` and ``cepstra`` evidence, and the output of every block of Whisper base's
encoder's 6 blocks, each averaged over a frame's two feature steps.

- ``layers``: a ridge regression over +-``window`` frames of the chosen evidence (Whisper blocks projected onto
  ``pca`` principal components) predicts each clip's z-scored opening and is scored like a rendered mouth
  (``drive_ref.aperture_correlation``, best lag within +-5, and at lags 0 and within +-1), one figure per speaker
  (its longest clip). ``loso``: fitted on every other speaker; ``prior``: fitted on a subject (the anchor, the demo)
  pooled with the public-domain clips, as a fit pools ``head.code.prior``, scored on every speaker neither holds.
- ``stream``: the prior protocol's regression on block 3 applied to the features a stream computes (blocks of 4
  frames, each encoded from ``context`` seconds before it to ``look-ahead`` seconds past it, unpadded), against
  the offline features, on every ``--every``-th unseen speaker's first 12 s; also the encoder's CPU time.
- ``speech``: the shipped speech model (``SpeechToCode`` with its gain, pull and prior) on subjects prepared with
  the ``whisper`` encoder (``WORK/demo_prepared``, ``WORK/anchor_prepared``), per ridge and window: the predicted
  opening against the tracked one on the held-out frames (and its spread), and against the real mouths of every
  speaker the prior and the subject do not hold.

Which figure each remakes: docs/lip_sync.md, "Tenth round".
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
FPS = 25.0
ANCHOR, DEMO = "anchor_en_71s_512", "obama2010_pd_en_20s_256"
#: Speakers of ../shared/data/video's clips; speakers/ names them in the file name.
VIDEO_SPEAKERS = {
    "anchor_en_71s_512": "anchor", "feifeili_en_10s_256": "feifeili", "feifeili_en_15s_256": "feifeili",
    "hdtf_katiehill_8s_512": "katiehill", "noem_en_18s_256": "noem", "obama2010_pd_en_20s_256": "obama",
    "obama_diwali_pd_en_30s_256": "obama", "obama_pd_8s_960x540": "obama", "reagan_pd_en_26s_256": "reagan",
    "retalk_anchor_f_en_7s_700": "anchor_f", "retalk_mcguinness_en_5s_524": "mcguinness",
    "retalk_swalwell_en_5s_844": "swalwell"}


def speaker_of(stem: str) -> str:
    if stem in VIDEO_SPEAKERS:
        return VIDEO_SPEAKERS[stem]
    return re.match(r"^[a-z0-9]+_(.*)_(en|unk)_\d+s_\d+$", stem).group(1)


def clips() -> list[Path]:
    return sorted((SHARED / "video").glob("*.mp4")) + sorted((SHARED / "speakers").glob("*.mp4"))


def _speech(clip: Path, ref: np.ndarray) -> tuple[np.ndarray, int]:
    from talkgs.eval.lipsync import _fill_gaps
    from talkgs.prepare.sync import energy_envelope, estimate_offset, shift_audio
    from talkgs.render.driver import read_speech

    samples = read_speech(clip)
    offset = estimate_offset(_fill_gaps(ref), energy_envelope(samples, 16000, len(ref), FPS), FPS, 8)
    frames = offset.frames if offset.confident else 0
    return shift_audio(samples, frames, 16000, FPS), frames


def _all_blocks(samples: np.ndarray, n: int) -> np.ndarray:
    """[n, 6, W] float16: the output of each of Whisper base's 6 encoder blocks, per frame (the ``whisper``
    encoder at each ``whisper_layer``)."""
    from talkgs.audio import whisper
    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import feature_times

    times = feature_times(n, FPS).reshape(-1)
    blocks = [whisper.whisper_features(samples, times, AudioConfig(whisper_layer=k)) for k in range(1, 7)]
    return np.stack(blocks, 1).reshape(n, 2, 6, -1).mean(1).astype(np.float16)


def collect(clip: Path, cache: Path) -> dict[str, np.ndarray]:
    out = cache / f"{clip.stem}.npz"
    if out.exists():
        return dict(np.load(out))
    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import encode_audio
    from talkgs.eval.lipsync import mouth_openings
    from talkgs.utils import media

    info = media.probe_video(clip)
    ref = mouth_openings(clip, (info.width, info.height), FPS)
    samples, offset = _speech(clip, ref)
    n = len(ref)
    data = {"ref": ref, "offset": np.array(offset),
            "visemes": encode_audio("visemes", samples, n, FPS, AudioConfig()).mean(1),
            "cepstra": encode_audio("cepstra", samples, n, FPS, AudioConfig()).mean(1),
            "whisper": _all_blocks(samples, n)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(out, **data)
    return data


def evidence(d: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """[F, D]: the parts of ``kind`` joined by '+': V (visemes), C (cepstra), W<k> or W<k>.<k'> (the outputs of
    Whisper blocks k, k', ... in 1-6, averaged)."""
    cols = []
    for part in kind.split("+"):
        if part == "V":
            cols.append(d["visemes"].astype(np.float64))
        elif part == "C":
            cols.append(d["cepstra"].astype(np.float64))
        else:
            cols.append(d["whisper"][:, [int(k) - 1 for k in part[1:].split(".")]].astype(np.float64).mean(1))
    return np.concatenate(cols, 1)


def windows(x: np.ndarray, w: int) -> np.ndarray:
    n = len(x)
    pad = np.pad(x, ((w, w), (0, 0)), mode="edge")
    return np.concatenate([pad[i:i + n] for i in range(2 * w + 1)] + [np.ones((n, 1))], 1)


def _ridge(rows: list[tuple[np.ndarray, np.ndarray]], lam: float) -> np.ndarray:
    g = sum(x.T @ x for x, _ in rows)
    b = sum(x.T @ y for x, y in rows)
    penalty = np.full(g.shape[0], lam * len(rows))
    penalty[-1] = 0.0  # the bias is free
    return np.linalg.solve(g + np.diag(penalty), b)


def _scores(pred: np.ndarray, ref: np.ndarray) -> tuple[float, int, float, float]:
    from talkgs.eval.drive_ref import aperture_correlation

    best, lag = aperture_correlation(pred, ref, 5)
    return best, lag, aperture_correlation(pred, ref, 0)[0], aperture_correlation(pred, ref, 1)[0]


def _per_speaker(scores: dict[str, tuple], data: dict[str, dict]) -> dict[str, tuple]:
    """The longest clip's scores of every speaker."""
    longest: dict[str, str] = {}
    for stem in scores:
        sp = speaker_of(stem)
        if sp not in longest or len(data[stem]["ref"]) > len(data[longest[sp]]["ref"]):
            longest[sp] = stem
    return {sp: scores[stem] for sp, stem in longest.items()}


def _summary(per: dict[str, tuple]) -> str:
    a = np.array(list(per.values()), dtype=float)
    return (f"{len(a)} speakers: median best-lag {np.median(a[:, 0]):.3f}, lag 0 {np.median(a[:, 2]):.3f}, "
            f"lag +-1 {np.median(a[:, 3]):.3f}")


def _design(data: dict[str, dict], kind: str, window: int, pca: int, basis_on: list[str] | None) -> dict:
    from talkgs.eval.drive_ref import _zscore

    x = {s: evidence(d, kind) for s, d in data.items()}
    if pca and next(iter(x.values())).shape[1] > pca:
        pool = np.concatenate([x[s] for s in (basis_on or x)])
        mean = pool.mean(0)
        basis = np.linalg.svd(pool - mean, full_matrices=False)[2][:pca].T
        x = {s: (v - mean) @ basis for s, v in x.items()}
    return {s: (windows(v, window), _zscore(data[s]["ref"])) for s, v in x.items()}


def cmd_layers(args, data: dict[str, dict]) -> None:
    public = [s for s in data if "_pd_" in s]
    for kind in args.kinds.split(","):
        xy = _design(data, kind, args.window, args.pca, public if args.protocol == "prior" else None)
        if args.protocol == "loso":
            scores = {}
            for sp in sorted({speaker_of(s) for s in data}):
                w = _ridge([xy[s] for s in data if speaker_of(s) != sp], args.ridge)
                scores.update({s: _scores(xy[s][0] @ w, data[s]["ref"]) for s in data if speaker_of(s) == sp})
            print(f"{kind:10s} leave one speaker out: {_summary(_per_speaker(scores, data))}", flush=True)
            continue
        for subject in (ANCHOR, DEMO):
            train = [subject] + [s for s in public if s != subject]
            w = _ridge([xy[s] for s in train], args.ridge)
            seen = {speaker_of(s) for s in train}
            scores = {s: _scores(xy[s][0] @ w, data[s]["ref"]) for s in data if speaker_of(s) not in seen}
            print(f"{kind:10s} {subject} + public-domain clips: {_summary(_per_speaker(scores, data))}", flush=True)


def cmd_stream(args, data: dict[str, dict]) -> None:
    from talkgs.audio import whisper
    from talkgs.audio.config import AudioConfig

    public = [s for s in data if "_pd_" in s]
    train = [ANCHOR] + public
    xy = _design(data, "W3", 3, 128, public)
    w = _ridge([xy[s] for s in train], 300.0)
    pool = np.concatenate([evidence(data[s], "W3") for s in public])
    mean = pool.mean(0)
    basis = np.linalg.svd(pool - mean, full_matrices=False)[2][:128].T
    seen = {speaker_of(s) for s in train}
    unseen = _per_speaker({s: () for s in data if speaker_of(s) not in seen}, data)
    stems = [next(s for s in data if speaker_of(s) == sp and len(data[s]["ref"]) == max(
        len(data[t]["ref"]) for t in data if speaker_of(t) == sp)) for sp in sorted(unseen)][:: args.every]
    cfg = AudioConfig()
    settings = [tuple(float(v) for v in s.split(",")) for s in args.settings]
    offline, streamed = [], {s: ([], []) for s in settings}
    for stem in stems:
        n = min(300, len(data[stem]["ref"]))
        ref = data[stem]["ref"][:n]
        path = next(p for p in clips() if p.stem == stem)
        samples, _ = _speech(path, data[stem]["ref"])
        offline.append(_scores(xy[stem][0][:n] @ w, ref)[0])
        for context, lookahead in settings:
            feats = np.zeros((n, basis.shape[0]))
            start_clock = time.process_time()
            for lo in range(0, n, 4):
                hi = min(n, lo + 4)
                end = hi / FPS + lookahead
                begin = max(0.0, end - context)
                stretch = samples[round(begin * 16000): round(end * 16000)]
                stretch = np.pad(stretch, (0, max(0, round((end - begin) * 16000) - len(stretch))))
                times = ((np.arange(lo, hi)[:, None] + np.array([0.25, 0.75])) / FPS).reshape(-1) - begin
                feats[lo:hi] = whisper.whisper_features(stretch, times, cfg, pad=False).reshape(hi - lo, 2, -1).mean(1)
            cpu = time.process_time() - start_clock
            pred = windows((feats - mean) @ basis, 3) @ w
            streamed[(context, lookahead)][0].append(_scores(pred, ref)[0])
            streamed[(context, lookahead)][1].append(cpu / (n / FPS))
    print(f"{len(stems)} speakers, first 12 s: offline median {np.median(offline):.3f}")
    for s, (corr, cpu) in streamed.items():
        print(f"context {s[0]:g} s, look-ahead {s[1]:g} s: median {np.median(corr):.3f}, "
              f"CPU {np.mean(cpu):.2f} s per second of speech")


def cmd_speech(args, data: dict[str, dict]) -> None:
    import itertools

    import torch

    from talkgs.data.subject import Subject
    from talkgs.eval.drive_ref import drive_ref_metrics
    from talkgs.model.mouth_code import MouthBasis, MouthCodeConfig, SpeechToCode, load_prior

    encoders = tuple(args.encoders.split(","))
    public = sorted(s for s in data if "_pd_" in s)  # load_prior's clip order
    grid = list(itertools.product(*(map(float, v.split(",")) for v in (
        args.windows, args.ridges, args.prior_weights, args.gains, args.pulls))))
    for name, stem in (("demo", DEMO), ("anchor", ANCHOR)):
        subject = Subject(args.work / f"{name}_prepared")
        layer = subject.meta["config"]["audio"].get("whisper_layer", 3)
        parts = [np.asarray(subject.audio_features(e)) for e in encoders]
        feats = torch.tensor(np.concatenate(parts, -1))
        # With the visemes among the encoders, their p/b/m pull the mouth shut (MouthCodeConfig.bilabial).
        column = sum(p.shape[-1] for p in parts[:encoders.index("visemes")]) if "visemes" in encoders else None
        kind = "+".join({"whisper": f"W{layer}", "visemes": "V", "cepstra": "C"}[e] for e in encoders)
        train, test = torch.as_tensor(subject.train_indices), torch.as_tensor(subject.test_indices)
        clips_ = [c for c, s in zip(load_prior(subject.fps, encoders), public) if s != stem]
        seen = {speaker_of(s) for s in public} | {speaker_of(stem)}
        drivers = [max((s for s in data if speaker_of(s) == sp), key=lambda t: len(data[t]["ref"]))
                   for sp in _per_speaker({s: () for s in data if speaker_of(s) not in seen}, data)]
        for window, ridge, weight, gain, pull in grid:
            cfg = MouthCodeConfig(window=int(window), ridge=ridge, prior_weight=weight, max_gain=gain, pull=pull)
            basis = MouthBasis(cfg)
            basis.fit(subject.canonical_landmarks[subject.train_indices])
            codes = basis.encode(subject.canonical_landmarks)
            prior = [(torch.from_numpy(e), basis.transfer_mouth(m)) for e, m in clips_]
            model = SpeechToCode(feats.shape[-1], cfg)
            model.fit(feats, codes, train, prior=prior, opening=basis.opening(codes), visemes_column=column)
            pred, true = basis.opening(model(feats, test)).numpy(), basis.opening(codes[test]).numpy()
            cross, closures = [], []
            for s in drivers:
                e = torch.tensor(np.repeat(evidence(data[s], kind)[:, None], 2, 1), dtype=torch.float32)
                opening = basis.opening(model(e, torch.arange(len(e)))).numpy()
                cross.append(_scores(opening, data[s]["ref"]))
                m = drive_ref_metrics(opening, data[s]["ref"])
                closures.append((m["closure_recall"], m["closure_precision"]))
            a = np.array(cross, dtype=float)
            c = np.array(closures, dtype=float)
            print(f"{name} window {window:g} ridge {ridge:g} prior weight {weight:g} max gain {gain:g} pull {pull:g}: "
                  f"held-out opening {np.corrcoef(pred, true)[0, 1]:.3f} (spread {pred.std() / true.std():.2f}); "
                  f"{len(a)} other speakers: median {np.median(a[:, 0]):.3f} (lag 0 {np.median(a[:, 2]):.3f}), "
                  f"closures recall {np.nanmedian(c[:, 0]):.2f} precision {np.nanmedian(c[:, 1]):.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("layers", "stream", "speech"))
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "whisper_evidence")
    p.add_argument("--kinds", default="V+C,W1,W2,W3,W4,W5,W6", help="layers: evidence sets")
    p.add_argument("--protocol", choices=("loso", "prior"), default="loso")
    p.add_argument("--pca", type=int, default=128)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--ridge", type=float, default=10.0, help="per training clip")
    p.add_argument("--every", type=int, default=3, help="stream: every n-th unseen speaker")
    p.add_argument("--settings", nargs="+", default=["4,0.5", "8,0.5", "2,0.5", "4,0.2", "4,1"],
                   help="stream: context,look-ahead pairs in seconds")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "w", help="speech: prepared subjects")
    p.add_argument("--encoders", default="whisper", help="speech: the speech model's encoders")
    p.add_argument("--ridges", default="600")
    p.add_argument("--windows", default="3")
    p.add_argument("--prior-weights", default="0.5")
    p.add_argument("--gains", default="1.5", help="speech: MouthCodeConfig.max_gain values")
    p.add_argument("--pulls", default="0.5", help="speech: MouthCodeConfig.pull values")
    args = p.parse_args()
    data = {c.stem: collect(c, args.cache) for c in clips()}
    {"layers": cmd_layers, "stream": cmd_stream, "speech": cmd_speech}[args.command](args, data)


if __name__ == "__main__":
    main()
