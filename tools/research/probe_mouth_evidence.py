"""How far can speech evidence carry a mouth before any rendering? Other speakers' real mouths as the truth.

    python tools/research/probe_mouth_evidence.py [--features V,VC,VPC] [--stream 1,0.25] [--window 5] [--ridge 10]

For the longest clip of every speaker in ../shared/data/video it reads, once (cached as .npz):

- the real mouth opening, MediaPipe, 25 fps (``talkgs.eval.lipsync.mouth_openings``), with the clip's own
  audio-video offset corrected as ``talkgs eval --drive-ref`` corrects it;
- the ``visemes`` evidence of the soundtrack (V; what the code path's speech model reads);
- the ``cepstra`` features of the soundtrack (C; running-normalised cepstra, ``talkgs.audio.cepstra``);
- formants F1 and F2 (F) and the intensity (I) from Praat (``praat-parselmouth``, needed only for F and I),
  each normalised per clip, so that a voice's own range does not count;
- phone posteriors (P): how well each of the 42 phones of pocketsphinx's acoustic model fits each 10-ms
  frame (``tools/research/phone_posteriors.py``), smoothed over +-``--phone-smooth`` frames, as posteriors at a
  temperature of 1 / ``--phone-scale``, at the frames' feature times.

Then a ridge regression over +-window frames of the chosen evidence predicts the z-scored opening, and the
prediction is scored like the rendered mouth (``drive_ref.aperture_correlation``, best lag within +-5):

- ``subject-trained``: fitted on the anchor clip alone (what a fit does with its subject), scored on the
  8 other speakers;
- ``leave-one-speaker-out``: for each clip, fitted on every other speaker's clips (a multi-speaker prior);
- ``public-domain prior``: fitted on the anchor pooled with every public-domain clip (``_pd_`` in the name:
  Obama and Reagan, which may be copied into the project), scored on the speakers with no such clip, beside
  the anchor alone on the same speakers.

With ``--stream``, the public-domain prior's regression (trained on the offline evidence, as a fit trains
the speech model) is also scored on the evidence a stream computes (``talkgs.render.driver.FeatureStream``) at
each look-ahead: what the low-latency stream costs.

No rendering and no fitted head: a cheap ceiling for the code path's speech model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# bench_lip_sync, imported below, lives one folder up in tools/.
sys.path.append(str(ROOT / "tools"))
FPS = 25.0
SUBJECT = "anchor"


def _public_domain() -> list[Path]:
    from bench_lip_sync import SHARED

    return sorted(SHARED.glob("*_pd_*.mp4"))


def _collect(clip: Path, cache: Path) -> dict[str, np.ndarray]:
    out = cache / f"{clip.stem}.npz"
    if out.exists():
        data = dict(np.load(out))
        if "cepstra" not in data or "phones" not in data:  # a cache from before these were probed
            from talkgs.audio.config import AudioConfig
            from talkgs.audio.features import encode_audio

            samples = _speech(clip, data["ref"])
            data["cepstra"] = encode_audio("cepstra", samples, len(data["ref"]), FPS, AudioConfig()).mean(1)
            data["phones"] = _phones(samples)
            np.savez(out, **data)
        return data
    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import encode_audio, feature_times
    from talkgs.eval.lipsync import mouth_openings
    from talkgs.utils import media

    info = media.probe_video(clip)
    ref = mouth_openings(clip, (info.width, info.height), FPS)  # [F]
    sr = media.SAMPLE_RATE
    samples = _speech(clip, ref)
    n = len(ref)
    data = {"ref": ref, "visemes": encode_audio("visemes", samples, n, FPS, AudioConfig()).mean(1),  # [F, 16]
            "cepstra": encode_audio("cepstra", samples, n, FPS, AudioConfig()).mean(1),  # [F, 13]
            "phones": _phones(samples)}  # [T, 42] at 100 Hz
    try:
        import parselmouth
    except ImportError:
        parselmouth = None
    if parselmouth is not None:
        times = feature_times(n, FPS).reshape(-1)
        sound = parselmouth.Sound(samples.astype(np.float64), sampling_frequency=sr)
        formant = sound.to_formant_burg(time_step=0.01, max_number_of_formants=5, maximum_formant=5500.0)
        intensity = sound.to_intensity(minimum_pitch=75.0, time_step=0.01)
        data["formants"] = np.array([[formant.get_value_at_time(k, t) for k in (1, 2)] for t in times]).reshape(n, 2, 2)
        data["intensity"] = np.array([intensity.get_value(t) for t in times]).reshape(n, 2)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(out, **data)
    return data


def _phones(samples: np.ndarray) -> np.ndarray:
    """[T, 42] float32: each phone's best state's log-likelihood at every 10-ms frame."""
    from phone_posteriors import phone_loglik

    return phone_loglik(samples)[0].max(-1).astype(np.float32)


def _phone_posteriors(loglik: np.ndarray, n: int, scale: float, smooth: int) -> np.ndarray:
    """[F, 42] posteriors of ``loglik`` [T, 42] (100 Hz) summed over +-``smooth`` frames, at the ``n``
    frames' two feature times, averaged."""
    from phone_posteriors import HOP, SAMPLE_RATE, WINDOW_CENTRE_S

    from talkgs.audio.features import feature_times

    summed = np.cumsum(np.pad(loglik, ((smooth + 1, smooth), (0, 0)), mode="edge"), 0)
    z = scale * (summed[2 * smooth + 1:] - summed[:-2 * smooth - 1])  # [T, 42]
    post = np.exp(z - z.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    step = HOP / SAMPLE_RATE
    idx = np.clip(np.round((feature_times(n, FPS) - WINDOW_CENTRE_S) / step).astype(int), 0, len(post) - 1)
    return post[idx].mean(1)


def _streamed(clip: Path, data: dict[str, np.ndarray], lookahead_s: float, cache: Path) -> dict[str, np.ndarray]:
    """The clip's ``visemes`` and ``cepstra`` as a stream computes them (``FeatureStream``, 40-ms chunks) with
    ``lookahead_s`` of audio past each block: all-phone decoding over a sliding stretch, not word recognition."""
    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import feature_dim
    from talkgs.render.driver import FeatureStream

    out = cache / f"{clip.stem}.stream_{lookahead_s:g}.npz"
    if out.exists():
        return dict(np.load(out))
    cfg = AudioConfig()
    stream = FeatureStream(("visemes", "cepstra"), FPS, cfg, lookahead_s)
    samples = _speech(clip, data["ref"])
    chunk = round(0.04 * stream.SAMPLE_RATE)
    for a in range(0, len(samples), chunk):
        stream.push(samples[a:a + chunk])
    stream.finish(len(data["ref"]))
    feats = np.stack(stream.features).mean(1)  # [F, D]
    v = feature_dim("visemes", cfg)
    result = {"visemes": feats[:, :v], "cepstra": feats[:, v:]}
    np.savez(out, **result)
    return result


def _speech(clip: Path, ref: np.ndarray) -> np.ndarray:
    """The clip's soundtrack with its own audio-video offset (against its mouth opening ``ref``) corrected."""
    from talkgs.eval.lipsync import _fill_gaps
    from talkgs.prepare.sync import energy_envelope, estimate_offset, shift_audio
    from talkgs.render.driver import read_speech
    from talkgs.utils import media

    samples = read_speech(clip)
    sr = media.SAMPLE_RATE
    offset = estimate_offset(_fill_gaps(ref), energy_envelope(samples, sr, len(ref), FPS), FPS, 8)
    return shift_audio(samples, offset.frames if offset.confident else 0, sr, FPS)


def _per_clip_z(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[F, 2] track with NaN where undefined -> (per-clip z-score averaged over the two steps, defined share)."""
    ok = np.isfinite(x)
    v = x[ok]
    z = np.where(ok, (x - np.median(v)) / max(float(v.std()), 1e-9), 0.0)
    return z.mean(1), ok.mean(1)


def design(data: dict[str, np.ndarray], kind: str, window: int, phone_scale: float = 1.0,
           phone_smooth: int = 2) -> np.ndarray:
    """[F, (2W+1) D + 1] windows of the evidence named by the letters of ``kind`` (V, C, F, I, P), and a bias."""
    cols = []
    if "V" in kind:
        cols.append(data["visemes"])
    if "C" in kind:
        cols.append(data["cepstra"])
    if "P" in kind:
        cols.append(_phone_posteriors(data["phones"], len(data["ref"]), phone_scale, phone_smooth))
    if "F" in kind or "I" in kind:
        if "formants" not in data:
            raise SystemExit("error: F and I need praat-parselmouth (pip install praat-parselmouth), "
                             "and a --cache made with it")
    if "F" in kind:
        for k in range(2):
            z, ok = _per_clip_z(data["formants"][:, :, k])
            cols.append(z[:, None])
        cols.append(ok[:, None])
    if "I" in kind:
        z, _ = _per_clip_z(data["intensity"])
        cols.append(z[:, None])
    x = np.concatenate(cols, 1)
    n = len(x)
    pad = np.pad(x, ((window, window), (0, 0)), mode="edge")
    return np.concatenate([pad[i:i + n] for i in range(2 * window + 1)] + [np.ones((n, 1))], 1)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    penalty = np.full(x.shape[1], lam)
    penalty[-1] = 0.0  # the bias is free
    return np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ y)


def main() -> None:
    from talkgs.eval.drive_ref import _zscore, aperture_correlation

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="V,VC,VF,VI,VFI,VFC")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--ridge", type=float, default=10.0, help="per training clip (the code path's default is 10)")
    p.add_argument("--phone-scale", type=float, default=1.0, help="P: inverse temperature of the posteriors")
    p.add_argument("--phone-smooth", type=int, default=2, help="P: summed over +-this many 10-ms frames")
    p.add_argument("--stream", default="", help="look-aheads (s, comma-separated): also score the public-domain "
                   "prior's regression on the evidence a stream computes with each (letters V and C only)")
    p.add_argument("--cache", default=str(ROOT / "outputs" / "evidence"))
    args = p.parse_args()
    from bench_lip_sync import PRIOR_SPEAKERS, longest_clips

    clips = longest_clips(("video",))
    data = {s: _collect(c, Path(args.cache)) for s, c in clips.items()}
    prior = {c.stem: _collect(c, Path(args.cache)) for c in _public_domain()}
    unseen = [s for s in data if s != SUBJECT and s not in PRIOR_SPEAKERS]
    results = {}
    for kind in args.features.split(","):
        x = {s: design(d, kind, args.window, args.phone_scale, args.phone_smooth) for s, d in data.items()}
        y = {s: _zscore(d["ref"]) for s, d in data.items()}
        w_subject = _ridge(x[SUBJECT], y[SUBJECT], args.ridge)
        subject_trained = {s: aperture_correlation(x[s] @ w_subject, data[s]["ref"], 5)[0]
                           for s in data if s != SUBJECT}
        loso = {}
        for s in data:
            others = [o for o in data if o != s]
            w = _ridge(np.concatenate([x[o] for o in others]), np.concatenate([y[o] for o in others]),
                       args.ridge * len(others))
            loso[s] = aperture_correlation(x[s] @ w, data[s]["ref"], 5)[0]
        xp = [x[SUBJECT], *(design(d, kind, args.window, args.phone_scale, args.phone_smooth) for d in prior.values())]
        yp = [y[SUBJECT], *(_zscore(d["ref"]) for d in prior.values())]
        w_prior = _ridge(np.concatenate(xp), np.concatenate(yp), args.ridge * len(xp))
        with_prior = {s: aperture_correlation(x[s] @ w_prior, data[s]["ref"], 5)[0] for s in unseen}
        results[kind] = {"subject_trained_median": round(float(np.median(list(subject_trained.values()))), 3),
                         "public_domain_prior_median": round(float(np.median(list(with_prior.values()))), 3),
                         "subject_trained_median_same_speakers":
                             round(float(np.median([subject_trained[s] for s in unseen])), 3),
                         "public_domain_prior": {s: round(v, 3) for s, v in with_prior.items()},
                         "leave_one_speaker_out_median": round(float(np.median(list(loso.values()))), 3),
                         "subject_trained": {s: round(v, 3) for s, v in subject_trained.items()},
                         "leave_one_speaker_out": {s: round(v, 3) for s, v in loso.items()}}
        r = results[kind]
        if args.stream and set(kind) <= set("VC"):
            r["stream"] = {}
            for lookahead in (float(v) for v in args.stream.split(",")):
                streamed = {}
                for s in unseen:
                    evidence = {**data[s], **_streamed(clips[s], data[s], lookahead, Path(args.cache))}
                    predicted = design(evidence, kind, args.window) @ w_prior
                    streamed[s] = aperture_correlation(predicted, data[s]["ref"], 5)[0]
                median = round(float(np.median(list(streamed.values()))), 3)
                r["stream"][f"{lookahead:g}"] = {"median": median,
                                                 "per_clip": {s: round(v, 3) for s, v in streamed.items()}}
                print(f"{kind:4s} stream, look-ahead {lookahead:g} s: {SUBJECT} + public-domain prior {median:.3f} "
                      f"(offline {r['public_domain_prior_median']:.3f})")
        print(f"{kind:4s} subject-trained (on {SUBJECT}) median {r['subject_trained_median']:.3f}   "
              f"leave-one-speaker-out median {r['leave_one_speaker_out_median']:.3f}   "
              f"{SUBJECT} + public-domain prior {r['public_domain_prior_median']:.3f} "
              f"({SUBJECT} alone on the same {len(unseen)}: {r['subject_trained_median_same_speakers']:.3f})")
    print(json.dumps({"clips": {s: c.name for s, c in clips.items()}, "prior_clips": sorted(prior),
                      "window": args.window, "ridge": args.ridge, "phone_scale": args.phone_scale,
                      "phone_smooth": args.phone_smooth, "results": results}, indent=1))


if __name__ == "__main__":
    main()
