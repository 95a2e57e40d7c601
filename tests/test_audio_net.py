"""Audio embedding net: windows, shapes, gradients, attention smoothing, causality, real audio."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from talkgs.model.audio_net import AudioEncoder, AudioNet, AudioNetConfig, TemporalAttention, feature_windows

DEMO = Path(__file__).resolve().parents[1] / "assets" / "obama2010_pd_en_20s_256.mp4"
SMALL = AudioNetConfig(window=3, hidden=16, out_dim=8, attention_frames=4)


def _features(num_frames: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_frames, 2, dim, generator=g)  # [F, 2, D]


def _net(dim: int, cfg: AudioNetConfig = SMALL, seed: int = 0) -> AudioNet:
    torch.manual_seed(seed)
    return AudioNet(dim, cfg)


def _reference_windows(features: torch.Tensor, index: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    rows = []
    for i in index.tolist():
        frames = range(i - 2 * window, i + 1) if causal else range(i - window, i + window + 1)
        rows.append(torch.stack([features[min(max(j, 0), features.shape[0] - 1)] for j in frames]))
    return torch.stack(rows)


@pytest.mark.parametrize("causal", [False, True])
def test_feature_windows_match_loop_reference_and_repeat_edges(causal):
    feats = _features(12, 5)
    index = torch.tensor([0, 1, 5, 10, 11, 0])
    win = feature_windows(feats, index, 3, causal)
    assert win.shape == (6, 7, 2, 5)
    torch.testing.assert_close(win, _reference_windows(feats, index, 3, causal), rtol=0, atol=0)
    # Frame 0's window reaches before the start: those frames are copies of frame 0.
    before = 6 if causal else 3
    assert torch.equal(win[0, :before], feats[0].expand(before, 2, 5))
    if not causal:
        assert torch.equal(win[4, -3:], feats[11].expand(3, 2, 5))
        assert torch.equal(win[2, 3], feats[5])  # the centre is the frame itself
    else:
        assert torch.equal(win[2, -1], feats[5])  # causal windows end at the frame


@pytest.mark.parametrize("dim", [80, 40, 1024])
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_and_dtype(dim, batch):
    feats = _features(20, dim)
    net = _net(dim)
    out = net(feats, torch.randint(0, 20, (batch,)))
    assert out.shape == (batch, SMALL.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_default_config_shapes():
    net = _net(80, AudioNetConfig())
    assert net(_features(40, 80), torch.tensor([0, 20, 39])).shape == (3, 32)
    assert net.encoder(torch.zeros(2, 18, 80)).shape == (2, 32)  # 9 frames of 2 steps


def test_bad_inputs_raise_clear_errors():
    net = _net(80)
    feats = _features(10, 80)
    with pytest.raises(ValueError, match="D=40"):
        net(_features(10, 40), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[F, 2, D\]"):
        net(feats[:, 0], torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        net(feats, torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        net(feats, torch.tensor([10]))
    with pytest.raises(ValueError, match="float64"):
        net(feats.double(), torch.tensor([0]))
    with pytest.raises(ValueError, match="steps must be"):
        net.encoder(torch.zeros(2, 5, 80))
    with pytest.raises(ValueError, match="window"):
        AudioNetConfig(window=-1)


def test_gradients_reach_every_parameter():
    net = _net(40)
    out = net(_features(30, 40), torch.tensor([0, 7, 15, 29]))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deterministic_with_seed():
    feats, index = _features(16, 80), torch.tensor([3, 9])
    a = _net(80, seed=3)(feats, index)
    b = _net(80, seed=3)(feats, index)
    c = _net(80, seed=4)(feats, index)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_attention_weights_sum_to_one():
    torch.manual_seed(0)
    att = TemporalAttention(8, 5)
    w = att.weights(torch.randn(6, 5, 8))
    assert w.shape == (6, 5) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(6))


def test_steady_signal_is_not_distorted():
    """Identical frames give identical embeddings, and a convex combination of them is that embedding."""
    net = _net(80)
    feats = _features(1, 80).expand(25, 2, 80).contiguous()
    index = torch.tensor([0, 12, 24])
    out = net(feats, index)
    window = feature_windows(feats, index, SMALL.window, SMALL.causal).flatten(1, 2)  # [B, S, D]
    torch.testing.assert_close(out, net.encoder(window), rtol=1e-5, atol=1e-5)


def test_unique_frames_encoded_once_match_direct_computation():
    """AudioNet's deduplicated encoding equals encoding every attention frame separately."""
    net = _net(40)
    feats, index = _features(15, 40), torch.tensor([0, 7, 14, 8])
    att = net.attention_index(index, 15)  # [B, A]
    assert att.tolist()[1] == [5, 6, 7, 8]  # even A: one more frame before than after
    windows = feature_windows(feats, att.flatten(), SMALL.window, False).flatten(1, 2)
    emb = net.encoder(windows).reshape(4, SMALL.attention_frames, -1)
    torch.testing.assert_close(net(feats, index), net.attention(emb))


@pytest.mark.parametrize("causal", [True, False])
def test_causal_output_ignores_the_future(causal):
    cfg = AudioNetConfig(window=3, hidden=16, out_dim=8, attention_frames=4, causal=causal)
    net = _net(40, cfg)
    feats = _features(30, 40)
    future = feats.clone()
    future[16:] += 5 * torch.randn_like(future[16:])
    index = torch.tensor([15, 10, 0])
    same = torch.allclose(net(feats, index), net(future, index))
    assert same == causal
    if causal:
        assert not torch.allclose(net(feats, torch.tensor([16])), net(future, torch.tensor([16])))


def test_set_feature_stats_standardises_inputs():
    net = _net(40)
    feats = 3 + 7 * _features(50, 40)
    net.set_feature_stats(feats)
    z = (feats - net.feature_mean) / net.feature_std
    torch.testing.assert_close(z.mean((0, 1)), torch.zeros(40), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 1), unbiased=False), torch.ones(40), atol=1e-4, rtol=0)
    assert "feature_mean" in net.state_dict()


def test_encoder_dim_from_constructor():
    with pytest.raises(ValueError, match="dim_in"):
        AudioEncoder("mel", SMALL)  # type: ignore[arg-type]


def test_real_audio_smoke():
    from talkgs.audio.config import AudioConfig
    from talkgs.audio.features import encode_audio
    from talkgs.utils.media import read_audio

    samples = read_audio(DEMO)
    num_frames = int(len(samples) / 16000 * 25)
    feats = torch.from_numpy(encode_audio("mel", samples, num_frames, 25.0, AudioConfig()))  # [F, 2, 80]
    net = _net(80, AudioNetConfig()).eval()
    net.set_feature_stats(feats)
    with torch.no_grad():
        out = net(feats, torch.arange(num_frames))  # [F, 32]
    assert out.shape == (num_frames, 32) and torch.isfinite(out).all()
    loudness = feats.mean((1, 2))  # [F] mean log-mel
    quiet, loud = int(loudness.argmin()), int(loudness.argmax())
    assert loudness[loud] - loudness[quiet] > 5  # the clip has both a pause and speech
    gap = (out[quiet] - out[loud]).norm()
    assert gap > 0.2 * max(out[quiet].norm(), out[loud].norm())
