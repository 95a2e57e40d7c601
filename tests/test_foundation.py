"""The package skeleton: cheap import, the CLI, configs, landmark topology, staged writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from talkgs.data import topology as topo
from talkgs.errors import TalkgsError
from talkgs.prepare.config import PrepareConfig
from talkgs.utils.config import from_dict, load_section, load_yaml, merge, preset_dir, preset_names, to_dict
from talkgs.utils.fs import StagingDir, check_destination


def test_import_is_light():
    code = (
        "import sys, talkgs, talkgs.cli.main, talkgs.data, talkgs.prepare.pipeline\n"
        "heavy = [m for m in ('mediapipe', 'torch', 'gsplat', 'transformers', 'pocketsphinx', 'viser') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help():
    exe = Path(sys.executable).with_name("talkgs")
    for argv in ([], ["prepare"]):
        out = subprocess.run([str(exe), *argv, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "usage: talkgs" in out.stdout
    out = subprocess.run([str(exe), "prepare", "--help"], capture_output=True, text=True)
    for flag in ("--size", "--audio-encoder", "--preview", "--force", "--av-offset", "--config"):
        assert flag in out.stdout


@pytest.mark.parametrize("preset", preset_names())
def test_presets_load(preset):
    cfg = load_section(PrepareConfig, preset, "prepare")
    assert isinstance(cfg, PrepareConfig)
    # Round trip: the saved form of a config rebuilds the same config.
    assert from_dict(PrepareConfig, to_dict(cfg)) == cfg
    assert set(load_yaml(preset_dir() / f"{preset}.yaml")) <= {"prepare", "fit", "render", "eval", "view"}


def test_config_errors_are_one_line():
    with pytest.raises(TalkgsError, match=r"unknown field\(s\) video.sise"):
        merge(PrepareConfig(), {"video": {"sise": 3}})
    with pytest.raises(TalkgsError, match="video.size must be int"):
        merge(PrepareConfig(), {"video": {"size": "big"}})
    assert merge(PrepareConfig(), {"video": {"fps": 30}}).video.fps == 30.0
    assert merge(PrepareConfig(), {"audio": {"encoders": ["mel"]}}).audio.encoders == ("mel",)


def test_topology_matches_mediapipe():
    import mediapipe as mp

    fm = mp.solutions.face_mesh

    def edges(contour):
        return {frozenset(e) for e in zip(contour, contour[1:] + contour[:1])}

    def mp_edges(name):
        return {frozenset(e) for e in getattr(fm, name)}

    assert edges(topo.FACE_OVAL) == mp_edges("FACEMESH_FACE_OVAL")
    assert edges(topo.LIPS_OUTER) | edges(topo.LIPS_INNER) == mp_edges("FACEMESH_LIPS")
    assert edges(topo.LEFT_EYE) == mp_edges("FACEMESH_LEFT_EYE")
    assert edges(topo.RIGHT_EYE) == mp_edges("FACEMESH_RIGHT_EYE")
    left_iris = {i for e in fm.FACEMESH_LEFT_IRIS for i in e}
    right_iris = {i for e in fm.FACEMESH_RIGHT_IRIS for i in e}
    assert topo.LEFT_IRIS_CENTER not in left_iris and topo.LEFT_IRIS_CENTER == min(left_iris) - 1
    assert topo.RIGHT_IRIS_CENTER == min(right_iris) - 1
    assert set(topo.LOWER_JAW) <= set(topo.FACE_OVAL)
    lips_eyes = set(topo.LIPS_OUTER + topo.LIPS_INNER + topo.LEFT_EYE + topo.RIGHT_EYE)
    assert not set(topo.RIGID) & (lips_eyes - {33, 133, 362, 263}) and not set(topo.RIGID) & set(topo.LOWER_JAW)


def test_shipped_mesh_triangles_are_mediapipes():
    """The fit reads the face mesh's triangles from package data, not from MediaPipe (a GPU server that
    fits a subject prepared elsewhere needs no MediaPipe): they must be MediaPipe's tessellation's."""
    import mediapipe as mp

    from talkgs.model.init_head import mesh_triangles

    edges = {frozenset(e) for e in mp.solutions.face_mesh.FACEMESH_TESSELATION}
    tris = mesh_triangles()
    assert tris.shape == (854, 3) and tris.dtype == np.int64
    assert len({tuple(t) for t in tris}) == len(tris)
    assert {frozenset(e) for t in tris for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2]))} == edges
    # Every 3-clique of the tessellation's edges is a triangle, and none is missing.
    nb: dict[int, set[int]] = {}
    for a, b in map(tuple, edges):
        nb.setdefault(a, set()).add(b)
        nb.setdefault(b, set()).add(a)
    cliques = {(a, b, c) for a in nb for b in nb[a] if b > a for c in nb[a] & nb[b] if c > b}
    assert {tuple(sorted(t)) for t in tris.tolist()} == cliques


def test_staging_dir(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "user.txt").write_text("mine")
    (dest / "old.bin").write_text("stale")
    (dest / "kept.bin").write_text("old")
    with pytest.raises(TalkgsError, match="--force"):
        check_destination(dest, force=False)
    check_destination(dest, force=True)
    with pytest.raises(RuntimeError):
        with StagingDir(dest, stale=["old.bin", "kept.bin"]) as tmp:
            (tmp / "kept.bin").write_text("new")
            raise RuntimeError("boom")
    assert (dest / "kept.bin").read_text() == "old" and (dest / "old.bin").exists()
    with StagingDir(dest, stale=["old.bin", "kept.bin", "user-would-never-be-listed"]) as tmp:
        (tmp / "kept.bin").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
    assert (dest / "kept.bin").read_text() == "new"
    assert not (dest / "old.bin").exists()
    assert (dest / "user.txt").read_text() == "mine" and (dest / "sub" / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
