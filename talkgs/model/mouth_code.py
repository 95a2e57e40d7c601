"""The mouth code: a few numbers per frame that say what the mouth does, between speech and the Gaussians.

``HeadConfig.drive = "code"`` puts this code between the audio and the motion fields:

- ``MouthBasis``: PCA of the lip and jaw landmarks in canonical head space (head pose removed by the
  tracker), fitted on the training frames and whitened, so component k is about the k-th most common
  way the subject's mouth moves (opening first, then width, rounding, the jaw). The fields train on
  each frame's tracked code, so they learn every mouth shape the subject made, whatever the audio.
- ``SpeechToCode``: a linear map from a window of speaker-independent speech evidence (the
  ``visemes`` encoder: mouth-shape classes of pocketsphinx's phones and the loudness relative to the
  recent peak; the ``cepstra`` encoder: the spectrum's shape, normalised per speaker) to the code.
  Linear because the subject gives a few hundred frames: a ridge regression cannot memorise the voice
  and is solved exactly, and its weights can be read (which viseme opens which component). Its
  predictions are scaled back to the codes' own spread (a regression mumbles) and pulled toward the
  nearest training codes, so the renderer is not asked for a mouth the subject never made.
- Another person's tracked mouth gives a code too (``MouthBasis.transfer``): its movement about its
  own mean, in the subject's components.
- ``load_prior``: other speakers' evidence and mouths shipped with talkgs (``talkgs/data/mouth_prior.npz``, the
  public-domain Obama and Reagan clips, about 84 s; ``tools/make_mouth_prior.py`` writes it). Pooled with the
  subject's frames (``MouthCodeConfig.prior``), the regression follows the words more than the subject's
  voice: measured before rendering on six speakers none of these clips contains, a ridge regression's
  predicted opening correlates with their real mouths at 0.469 from the visemes (0.433 from the anchor alone)
  and 0.525 with the cepstra beside them (0.382 from the anchor alone: without other voices the cepstra learn
  the subject's) (``tools/research/probe_mouth_evidence.py``, docs/lip_sync.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor, nn

from talkgs.audio.features import VISEMES, feature_times, resample_linear
from talkgs.data import topology as topo
from talkgs.model.audio_net import feature_windows

#: Landmarks of the code: both lip contours and the jaw line below the mouth.
MOUTH_IDS: tuple[int, ...] = tuple(dict.fromkeys(topo.LIPS_OUTER + topo.LIPS_INNER + topo.LOWER_JAW))
#: Rows of MOUTH_IDS: the front of the chin (the lower teeth follow it) and the inner lip contour.
_CHIN_ROWS = [MOUTH_IDS.index(i) for i in topo.CHIN_FRONT]
_INNER_ROWS = [MOUTH_IDS.index(i) for i in topo.LIPS_INNER]
#: The prior's evidence rate (Hz): fine enough to sample at any frame rate's feature times.
PRIOR_EVIDENCE_HZ = 100
#: The rate of the prior's ``whisper`` features: the encoder's own steps (``talkgs.audio.whisper.STEP_S``).
PRIOR_WHISPER_HZ = 50
#: Frame rate the prior's mouths were tracked at.
PRIOR_TRACK_FPS = 25.0
#: Audio encoders whose evidence the prior holds.
PRIOR_ENCODERS = ("visemes", "cepstra", "whisper")


@dataclass
class MouthCodeConfig:
    components: int = 8
    """C, PCA components of the code. On the demo clip 8 components keep 95 % of the lip and jaw
    landmark variance of the training frames; more mostly add tracking noise."""
    window: int = 3
    """Frames of speech evidence either side of a frame that its predicted code reads (+-120 ms at 25 fps: the
    anticipation and carry-over of coarticulation). Also the look-ahead of a stream. Whisper's features already
    carry the context around each step: with the ``whisper`` encoder 3 frames beat 5 on both subjects' held-out
    frames and on other speakers (tools/research/probe_whisper.py speech); pocketsphinx's visemes with the
    cepstra did best with 5."""
    reduce: int = 128
    """Evidence wider than this many columns (Whisper's 512) is projected onto its first ``reduce`` principal
    components over the regression's frames (each clip weighted alike) before the window: a ridge regression over
    11 x 512 inputs from a few thousand frames learns the voice. Before rendering, the anchor with the public-domain
    clips predicts 30 other speakers' mouths at 0.66, 0.69 and 0.70 with 64, 128 and 256 components, and its own
    held-out frames at 0.63, 0.64 and 0.64."""
    ridge: float = 600.0
    """L2 penalty of the speech-to-code regression (one row per training frame), for the default ``whisper``
    evidence (its principal components, about unit scale). Chosen across speakers, which is what new speech
    needs, and on the held-out frames (tools/research/probe_whisper.py speech, window 3, ``prior_weight`` 1 / 0.5):
    with 300, 600 and 1000 the anchor's predicted opening follows 30 other speakers' real mouths at 0.68, 0.69,
    0.69 / 0.68, 0.69, 0.69 and its own held-out frames at 0.68, 0.69, 0.70 / 0.69, 0.70, 0.70; the 20-s demo's
    31 speakers at 0.64, 0.61, 0.57 / 0.61, 0.59, 0.56 and its held-out frames at 0.71, 0.74, 0.78 / 0.72, 0.78,
    0.82, their spread 0.87, 0.79, 0.69 / 0.87, 0.83, 0.75. For pocketsphinx's ``visemes`` and ``cepstra`` (inputs
    in [0, 1]) 10 with a window of 5 was best (0.48 across 8 speakers on the demo)."""
    pull: float = 0.5
    """How far a predicted code moves toward the mean of its nearest training codes (0: not at all,
    1: onto them)."""
    neighbours: int = 8
    """Training codes averaged by the pull."""
    max_gain: float = 1.5
    """Ridge predictions vary less than the codes they predict (regression to the mean: a mouth that
    mumbles). Each component is scaled about its mean so that its predictions on the training frames
    vary as much as the tracked codes, by at most this factor. On the anchor's cpu fit (8 other
    speakers driving it; held-out frames): no scaling gives aperture 0.36, closure recall 0.27, held-out
    mouth_open_corr 0.50, head PSNR 30.20 dB; 1.5 gives 0.38, 0.41, 0.53, 29.94 dB; 3 gives 0.38, 0.35,
    0.52 and 29.43 dB, below the static head's 29.65 (a wrong opening shows more)."""
    prior: bool = True
    """Pool the subject's training frames with other speakers' (``talkgs.data.mouth_prior``: the public-domain
    Obama and Reagan clips, their codes by ``MouthBasis.transfer``; a clip that is the subject's own recording is
    left out) when solving the speech model, so that it learns the words more than the subject's voice. Needs
    encoders the prior holds (``PRIOR_ENCODERS``); the gain and the pull still use the subject's own codes. With
    the ``cepstra`` beside the ``visemes`` (the benchmark's code path), on the anchor (71 s, three fits, six
    speakers the prior does not contain driving it; docs/lip_sync.md) the speech model's predicted opening
    follows the held-out frames at 0.61 against 0.47 without the prior and without the cepstra, and the
    drivers' real mouths at 0.49 against 0.43; rendered, the held-out mouth is closer to the truth in every run.
    The 20-s demo subject's own held-out opening is followed less well (0.30 against 0.61 on 45 frames) while
    other speakers' mouths are followed better (0.50 against 0.47)."""
    prior_weight: float = 0.5
    """With ``prior``: the weight of all the prior's frames together, relative to all the subject's training
    frames (each prior frame counts ``prior_weight * n_subject / n_prior``). Less weight follows the subject's own
    voice better and other voices less well on a short clip (the demo, ridge 600: held-out 0.78, 0.74, 0.69 and
    31 speakers 0.59, 0.61, 0.64 with 0.5, 1, 2); on the 71-s anchor 0.5 and 1 are alike (0.70 / 0.69 held out,
    0.69 across speakers) and 2 is worse on both (0.66, 0.67)."""
    max_stored_codes: int = 4096
    """Training codes kept in the model for the pull (an even subsample of longer clips)."""
    bilabial: float = 1.0
    """How far a frame whose ``visemes`` evidence says p, b or m moves onto the subject's closed mouth (the mean of
    the ``neighbours`` closed training codes nearest its prediction): 0 not at all, 1 onto it, times the evidence's
    weight in the frame. The lips meet for every p, b and m, but the regression, which averages the frames around
    them, only leans toward closed. On the anchor (docs/lip_sync.md, seventh round) the predicted opening follows 6
    other speakers' real mouths at a median 0.534 against 0.489 without it and the held-out frames at 0.634
    against 0.609; rendered, three fits' aperture correlation rises from 0.395 to 0.420 and their held-out
    ``mouth_open_corr`` from 0.488 to 0.521. The 20-s demo subject's rendered aperture rises from 0.505 to 0.522
    (all 6 speakers up); its own 45 held-out frames are followed worse (0.19 against 0.30 before rendering: their
    one p/b/m falls where the tracked lips stay apart). Needs the ``visemes`` encoder."""
    bilabial_ramp: float = 0.5
    """The bilabial pull one frame before and after a p, b or m, relative to the pull on it: the lips close ahead
    of the release and part after it (at 25 fps a stop's closure often falls in the frame beside the aligned
    phone). 0.5 beats 0 by 0.012 on the anchor's 6 speakers before rendering."""
    closed_percentile: float = 5.0
    """Training codes whose opening is at or below this percentile of the training frames' are the subject's
    closed mouth, the target of ``bilabial`` (the 5th, 10th and 20th gave 0.534, 0.533 and 0.528)."""

    def __post_init__(self) -> None:
        for name in ("components", "neighbours", "max_stored_codes", "reduce"):
            if getattr(self, name) < 1:
                raise ValueError(f"MouthCodeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.window < 0 or self.ridge < 0 or self.prior_weight < 0 or not 0 <= self.pull <= 1:
            raise ValueError("MouthCodeConfig needs window >= 0, ridge >= 0, prior_weight >= 0 and pull in [0, 1]")
        if not (0 <= self.bilabial <= 1 and 0 <= self.bilabial_ramp <= 1 and 0 < self.closed_percentile < 100):
            raise ValueError("MouthCodeConfig needs bilabial and bilabial_ramp in [0, 1] and closed_percentile in "
                             "(0, 100)")


def _mouth_points(canonical: Tensor | np.ndarray) -> Tensor:  # [F, 478, 3] -> [F, 3L]
    x = torch.as_tensor(np.asarray(canonical) if not isinstance(canonical, Tensor) else canonical)
    if x.ndim != 3 or x.shape[1:] != (topo.NUM_LANDMARKS, 3):
        raise ValueError(f"canonical landmarks must be [F, {topo.NUM_LANDMARKS}, 3], got {tuple(x.shape)}")
    return x[:, list(MOUTH_IDS)].reshape(x.shape[0], -1).double()


class MouthBasis(nn.Module):
    """Whitened PCA of the mouth landmarks; buffers, so that it is saved with the head."""

    def __init__(self, cfg: MouthCodeConfig):
        super().__init__()
        dim = 3 * len(MOUTH_IDS)
        self.register_buffer("mean", torch.zeros(dim))  # [3L]
        self.register_buffer("components", torch.zeros(cfg.components, dim))  # [C, 3L] orthonormal rows
        self.register_buffer("scale", torch.ones(cfg.components))  # [C] std of each component (m)
        self.register_buffer("low", torch.full((cfg.components,), -4.0))  # [C] smallest training code
        self.register_buffer("high", torch.full((cfg.components,), 4.0))  # [C] largest training code

    @torch.no_grad()
    def fit(self, canonical: Tensor | np.ndarray) -> float:
        """Fit on the training frames' canonical landmarks [F, 478, 3]; returns the variance share kept."""
        x = _mouth_points(canonical)  # [F, 3L]
        c = self.components.shape[0]
        if x.shape[0] <= c:
            raise ValueError(f"the mouth code needs more than {c} training frames, got {x.shape[0]}")
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        # A component's sign is arbitrary; fix it so that the largest landmark weight is positive and
        # refits of the same data agree.
        signs = torch.sign(vh[:c].gather(1, vh[:c].abs().argmax(1, keepdim=True))).squeeze(1)
        self.mean.copy_(mean)
        self.components.copy_(vh[:c] * signs[:, None])
        self.scale.copy_((s[:c] / np.sqrt(x.shape[0])).clamp_min(1e-9))
        codes = self.encode(canonical)
        self.low.copy_(codes.min(0).values)
        self.high.copy_(codes.max(0).values)
        return float((s[:c] ** 2).sum() / (s ** 2).sum())

    def encode(self, canonical: Tensor | np.ndarray) -> Tensor:
        """Codes [F, C] (float32, whitened) of canonical landmarks [F, 478, 3]."""
        x = _mouth_points(canonical)
        return (((x - self.mean.double()) @ self.components.double().T) / self.scale.double()).float()

    def decode(self, codes: Tensor) -> Tensor:
        """Mouth landmarks [F, L, 3] (canonical, metres) of codes [F, C]: for inspecting a code."""
        x = (codes.double() * self.scale.double()) @ self.components.double() + self.mean.double()
        return x.reshape(codes.shape[0], len(MOUTH_IDS), 3).float()

    def opening(self, codes: Tensor) -> Tensor:
        """[F] the inner-lip gap (metres) of the mouth that codes [F, C] describe: the code's opening,
        whichever components carry it."""
        pts = self.decode(codes)
        upper, lower = (MOUTH_IDS.index(i) for i in topo.INNER_LIP_MID)
        return (pts[:, upper] - pts[:, lower]).norm(dim=-1)

    def jaw_displacement(self, codes: Tensor) -> Tensor:
        """[..., 3] how far the front of the chin (``topology.CHIN_FRONT``) of the mouth that codes [..., C]
        describe lies from the mean mouth's, in canonical head space (metres): where the lower teeth go."""
        per_code = (self.scale[:, None] * self.components).reshape(len(self.scale), len(MOUTH_IDS), 3)
        return codes @ per_code[:, _CHIN_ROWS].mean(1)  # [C, 3]: the chin's mean movement per unit of each component

    def jaw_carry(self, points: Tensor, height: float) -> Tensor:
        """[M] how much of the jaw's movement canonical ``points`` [M, 3] follow: 0 above the mean mouth's
        inner-lip line, 1 below it, rising linearly over ``height`` metres about it (+y points down)."""
        line = self.mean.reshape(len(MOUTH_IDS), 3)[_INNER_ROWS, 1].mean()
        return ((points[:, 1] - line.to(points.dtype)) / height + 0.5).clamp(0.0, 1.0)

    def transfer(self, canonical: Tensor | np.ndarray) -> Tensor:
        """Codes [T, C] for another person's canonical landmarks [T, 478, 3]: their mouth's movement about
        its own mean in this subject's components (canonical space has the same eye width for everyone),
        kept inside the range of the subject's training codes."""
        return self._transfer(_mouth_points(canonical))

    def transfer_mouth(self, mouth: Tensor | np.ndarray) -> Tensor:
        """``transfer`` of the ``MOUTH_IDS`` landmarks alone, [T, L, 3] -> codes [T, C]."""
        x = torch.as_tensor(np.asarray(mouth) if not isinstance(mouth, Tensor) else mouth).double()
        if x.ndim != 3 or x.shape[1:] != (len(MOUTH_IDS), 3):
            raise ValueError(f"mouth landmarks must be [T, {len(MOUTH_IDS)}, 3], got {tuple(x.shape)}")
        return self._transfer(x.reshape(x.shape[0], -1))

    def _transfer(self, x: Tensor) -> Tensor:  # [T, 3L] float64 -> [T, C]
        delta = x - x.mean(0)
        codes = ((delta @ self.components.double().T) / self.scale.double()).float()
        return torch.maximum(torch.minimum(codes, self.high), self.low)


#: Index of the p/b/m class in the ``visemes`` evidence (its columns: the viseme one-hot, then loudness).
BILABIAL = list(VISEMES).index("bilabial")


class SpeechToCode(nn.Module):
    """Speech evidence [F, 2, D] -> mouth codes: ridge regression over a window of frames, a pull toward the
    training codes, and p/b/m frames pulled onto the closed mouth (``MouthCodeConfig.bilabial``). The code path's
    counterpart of ``AudioNet``: same call, same context."""

    def __init__(self, dim_in: int, cfg: MouthCodeConfig):
        super().__init__()
        self.cfg = cfg
        self.dim_in = dim_in
        reduced = min(dim_in, cfg.reduce)
        self.register_buffer("evidence_mean", torch.zeros(dim_in))  # [D]
        self.register_buffer("evidence_basis", torch.eye(dim_in, reduced))  # [D, R] orthonormal columns
        width = (2 * cfg.window + 1) * reduced + 1
        self.register_buffer("weight", torch.zeros(width, cfg.components))  # [(2W+1) R + 1, C]
        self.register_buffer("center", torch.zeros(cfg.components))  # [C] mean prediction on the training frames
        self.register_buffer("gain", torch.ones(cfg.components))  # [C] (see ``MouthCodeConfig.max_gain``)
        self.register_buffer("train_codes", torch.zeros(0, cfg.components))  # [K, C]
        self.register_buffer("closed_codes", torch.zeros(0, cfg.components))  # [K', C] the subject's closed mouths
        # The evidence column of the p/b/m class (-1: no visemes evidence, no bilabial pull).
        self.register_buffer("bilabial_column", torch.tensor(-1))

    @property
    def right_context(self) -> int:
        """Frames after frame i whose evidence its code reads."""
        return self.cfg.window

    @property
    def left_context(self) -> int:
        return self.cfg.window

    def _design(self, features: Tensor, index: Tensor) -> Tensor:  # -> [B, (2W+1) R + 1]
        if features.ndim != 3 or features.shape[1] != 2 or features.shape[2] != self.dim_in:
            raise ValueError(f"features must be [F, 2, {self.dim_in}], got {tuple(features.shape)}")
        windows = feature_windows(features, index, self.cfg.window, causal=False).mean(2)  # [B, 2W+1, D]
        reduced = (windows.double() - self.evidence_mean.double()) @ self.evidence_basis.double()  # [B, 2W+1, R]
        flat = reduced.flatten(1)
        return torch.cat([flat, torch.ones_like(flat[:, :1])], 1)

    def _fit_basis(self, rows: list[Tensor]) -> None:
        """The projection of the evidence: the identity for evidence of at most ``cfg.reduce`` columns, else the
        ``cfg.reduce`` principal components of the frames ``rows`` ([n_k, D] each, every clip weighted alike)."""
        if self.dim_in <= self.cfg.reduce:
            return
        mean = torch.stack([r.double().mean(0) for r in rows]).mean(0)  # [D]
        _, _, vh = torch.linalg.svd(torch.cat([(r.double() - mean) / len(r) ** 0.5 for r in rows]),
                                    full_matrices=False)
        self.evidence_mean = mean.float()
        self.evidence_basis = vh[: self.cfg.reduce].T.float().contiguous()

    @torch.no_grad()
    def fit(self, features: Tensor, codes: Tensor, frames: Tensor,
            prior: list[tuple[Tensor, Tensor]] | None = None, opening: Tensor | None = None,
            visemes_column: int | None = None) -> None:
        """Solve the ridge regression from the evidence of ``frames`` [n] to their tracked ``codes`` [F, C].

        ``prior``: other speakers' clips, each (evidence [F_k, 2, D], codes [F_k, C] in this subject's basis),
        whose frames join the regression's rows, weighted together as ``cfg.prior_weight`` times the subject's
        (the ridge penalty grows in proportion).
        ``opening`` [F] (the codes' inner-lip gaps) and ``visemes_column`` (where the ``visemes`` evidence starts
        in the D columns): the closed mouths and the evidence of the bilabial pull; without either, no pull."""
        frames = frames.to(features.device)
        self._fit_basis([features[frames].mean(1)] + [e.to(features.device).mean(1) for e, _ in prior or []])
        x = self._design(features, frames)  # [n, P]
        y = codes[frames].double()  # [n, C]
        xs, ys = [x], [y]
        for evidence, prior_codes in prior or []:
            xs.append(self._design(evidence.to(x.device), torch.arange(len(evidence), device=x.device)))
            ys.append(prior_codes.to(x.device).double())
        if len(xs) > 1:
            # All the prior's frames together weigh ``prior_weight`` times the subject's frames, whatever their
            # number: a short subject is not drowned by the other voices.
            scale = (self.cfg.prior_weight * len(x) / sum(len(p) for p in xs[1:])) ** 0.5
            xs[1:], ys[1:] = [p * scale for p in xs[1:]], [p * scale for p in ys[1:]]
        xa, ya = torch.cat(xs), torch.cat(ys)
        rows = 1.0 + (self.cfg.prior_weight if len(xs) > 1 else 0.0)  # in subjects' worth of frames
        penalty = torch.full((x.shape[1],), float(self.cfg.ridge) * rows, dtype=torch.float64, device=x.device)
        penalty[-1] = 0.0  # the bias is free
        w = torch.linalg.solve(xa.T @ xa + torch.diag(penalty), xa.T @ ya)
        self.weight.copy_(w.float())
        pred = x @ w  # [n, C]
        self.center.copy_(pred.mean(0).float())
        self.gain.copy_((y.std(0) / pred.std(0).clamp_min(1e-9)).clamp(1.0, self.cfg.max_gain).float())
        keep = codes[frames]
        if len(keep) > self.cfg.max_stored_codes:
            keep = keep[torch.linspace(0, len(keep) - 1, self.cfg.max_stored_codes).round().long()]
        self.train_codes = keep.float().clone()
        if opening is not None and visemes_column is not None:
            gap = opening[frames].double()
            self.closed_codes = codes[frames][gap <= torch.quantile(gap, self.cfg.closed_percentile / 100)].float()
            self.bilabial_column.fill_(visemes_column + BILABIAL)

    def forward(self, features: Tensor, index: Tensor) -> Tensor:
        """Codes [B, C] of frames ``index`` [B] of the evidence ``features`` [F, 2, D]."""
        pred = (self._design(features, index) @ self.weight.double()).float()  # [B, C]
        pred = self.center + self.gain * (pred - self.center)
        if self.cfg.pull > 0 and len(self.train_codes):
            k = min(self.cfg.neighbours, len(self.train_codes))
            near = torch.cdist(pred, self.train_codes).topk(k, largest=False).indices  # [B, k]
            pred = pred + self.cfg.pull * (self.train_codes[near].mean(1) - pred)
        column = int(self.bilabial_column)
        if self.cfg.bilabial > 0 and column >= 0 and len(self.closed_codes):
            said = feature_windows(features, index, 1, causal=False)[..., column].mean(2)  # [B, 3] p/b/m weight
            weight = torch.maximum(said[:, 1], self.cfg.bilabial_ramp * said[:, [0, 2]].amax(1)) * self.cfg.bilabial
            k = min(self.cfg.neighbours, len(self.closed_codes))
            near = torch.cdist(pred, self.closed_codes).topk(k, largest=False).indices  # [B, k]
            pred = pred + weight[:, None].to(pred) * (self.closed_codes[near].mean(1) - pred)
        return pred


def same_recording(a: np.ndarray, b: np.ndarray, min_frames: int = 125, agree: float = 0.8) -> bool:
    """Whether evidence a [T, 2, D] and b [T', 2, D] of the same encoders (same frame rate) come from one
    recording, one possibly cut from the other: at the best lag with at least ``min_frames`` frames of overlap (5 s
    at 25 fps),
    the frames' evidence (each clip's mean removed) has a mean cosine similarity of ``agree`` or more. The same
    soundtrack encoded twice: 0.97-1.0 (whole or a 4-s cut), other recordings: at most 0.46 (``whisper``) and 0.36
    (``visemes``) on the prior's clips against the demo, the anchor and noem."""
    fa, fb = (np.asarray(x, np.float32).mean(1) for x in (a, b))  # [T, D], [T', D]
    if min(len(fa), len(fb)) < min_frames:
        return False
    fa, fb = fa - fa.mean(0), fb - fb.mean(0)
    fa /= np.linalg.norm(fa, axis=1, keepdims=True) + 1e-9
    fb /= np.linalg.norm(fb, axis=1, keepdims=True) + 1e-9
    sim = fa @ fb.T  # [T, T']
    i, j = np.indices(sim.shape)
    diagonal = (i - j).ravel() + len(fb) - 1  # lag + T' - 1
    total = np.bincount(diagonal, sim.ravel(), len(fa) + len(fb) - 1)
    count = np.bincount(diagonal, None, len(fa) + len(fb) - 1)
    return bool((total / np.maximum(count, 1))[count >= min_frames].max() >= agree)


@functools.lru_cache(maxsize=1)
def _prior_arrays() -> dict[str, np.ndarray]:
    """Every array of ``talkgs/data/mouth_prior.npz``, read once (a fit asks for the prior with and without
    its own encoders); callers copy what they use."""
    with resources.files("talkgs.data").joinpath("mouth_prior.npz").open("rb") as f:
        return dict(np.load(f))


def load_prior(fps: float, encoders: tuple[str, ...] = ("visemes",),
               whisper_layer: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each prior clip at ``fps``: (the evidence of ``encoders`` concatenated, [F, 2, D] float32 at
    ``audio.feature_times``, canonical ``MOUTH_IDS`` landmarks [F, L, 3] float32 at the frames' centres), F the
    clip's whole frames at ``fps``. Raises ValueError for an encoder the prior does not hold, and for ``whisper``
    features of another block than ``whisper_layer`` (``AudioConfig.whisper_layer``)."""
    data = _prior_arrays()
    clips = []
    for stem in sorted(k.removesuffix(".mouth") for k in data if k.endswith(".mouth")):
        missing = [e for e in encoders if f"{stem}.{e}" not in data]
        if "whisper" in encoders and whisper_layer != int(data.get("whisper_layer", -1)):
            raise ValueError(f"the speech model's prior holds Whisper block {int(data.get('whisper_layer', -1))}, "
                             f"not {whisper_layer}")
        if missing:
            raise ValueError(f"the speech model's prior has no {', '.join(missing)} evidence (it has: "
                             f"{', '.join(PRIOR_ENCODERS)})")
        mouth = data[f"{stem}.mouth"].astype(np.float32)  # [M, L, 3] at PRIOR_TRACK_FPS
        rate = {e: PRIOR_WHISPER_HZ if e == "whisper" else PRIOR_EVIDENCE_HZ for e in encoders}
        n = int(min(len(mouth) / PRIOR_TRACK_FPS, *(len(data[f"{stem}.{e}"]) / rate[e] for e in encoders)) * fps)
        times = feature_times(n, fps).reshape(-1)  # [2n]
        parts = []
        for e in encoders:
            x = data[f"{stem}.{e}"].astype(np.float32)  # [T_e, D_e]
            if e == "whisper":  # stored at the encoder's own steps, between which it is smooth
                parts.append(resample_linear(np.arange(len(x)) / rate[e], x, times))
            else:
                parts.append(x[np.clip(np.round(times * rate[e]).astype(np.int64), 0, len(x) - 1)])
        frames = np.clip(np.floor((np.arange(n) + 0.5) / fps * PRIOR_TRACK_FPS).astype(np.int64), 0, len(mouth) - 1)
        clips.append((np.concatenate(parts, -1).reshape(n, 2, -1), mouth[frames]))  # [n, 2, D], [n, L, 3]
    return clips
