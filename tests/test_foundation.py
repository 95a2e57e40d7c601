"""The package skeleton: cheap import, the CLI, configs, landmark topology, staged writes."""

from __future__ import annotations

import os
import signal
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


def test_openmp_spin_is_set_before_torch_loads_it():
    """``import talkgs`` shortens libgomp's spin before torch loads it; the OpenMP runtime torch and the compiled
    kernels share is torch's one libgomp; a user's own setting is kept; after torch it changes nothing."""
    from talkgs.utils.threads import SPIN_COUNT

    code = ("import os, talkgs, torch; torch.ones(1 << 20).sum()\n"
            "from talkgs.render._cpu_backend import cpu_kernels; cpu_kernels()\n"
            "libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l})\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), libs)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    spin, libs = out.stdout.strip().split(" ", 1)
    assert spin == str(SPIN_COUNT)
    assert len(eval(libs)) == 1 and "torch" in libs  # one runtime: torch's
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**env, "GOMP_SPINCOUNT": "123"})
    assert mine.stdout.startswith("123 ")
    late = subprocess.run([sys.executable, "-c", "import os, torch, talkgs; print(os.environ.get('GOMP_SPINCOUNT'))"],
                          capture_output=True, text=True, check=True, env=env)
    assert late.stdout.strip() == "None"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to share")
def test_core_share_follows_a_busy_neighbour():
    """Beside a process that keeps a core busy, ``CoreShare`` leaves it that core (one thread fewer); once the
    neighbour stops, this process has all its cores again. Its own children (an encoder) are not neighbours."""
    import time

    import torch

    from talkgs.utils.threads import CoreShare

    before = torch.get_num_threads()
    share = CoreShare(every_s=0.05, smoothing=0.5)
    cores = share.cores

    def settle(seconds: float) -> list[int]:
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            share.update()
            seen.append(torch.get_num_threads())
            time.sleep(0.01)
        return seen

    try:
        assert settle(0.6)[-1] == cores
        # Another job: a spin loop started by a process that exits at once, so it is not this process's child.
        launch = ("import subprocess, sys\n"
                  "print(subprocess.Popen([sys.executable, '-c', 'while True: pass'], start_new_session=True,\n"
                  "                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
        spin = int(subprocess.run([sys.executable, "-c", launch], capture_output=True, text=True, check=True).stdout)
        try:
            assert settle(1.5)[-1] == cores - 1 and 0.6 < share.others < 1.4
        finally:
            os.kill(spin, signal.SIGKILL)
        assert settle(1.5)[-1] == cores
        # A busy child of this process is its own work, not a neighbour.
        busy = "import time\nend = time.time() + 2\nwhile time.time() < end: pass"
        child = subprocess.Popen([sys.executable, "-c", busy])
        try:
            assert settle(1.2)[-1] == cores and share.others < 0.4
        finally:
            child.kill()
            child.wait()
    finally:
        torch.set_num_threads(before)


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


def test_fair_slots_grant_turns_in_arrival_order():
    """A thread that releases and asks again at once waits behind those that asked before it; at most N hold."""
    import threading
    import time

    from talkgs.utils.threads import FairSlots

    slots, order, holding, most = FairSlots(1), [], [0], [0]
    gate = threading.Lock()

    def worker(name: str) -> None:
        for _ in range(3):
            with slots:
                with gate:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                order.append(name)
                time.sleep(0.01)
                with gate:
                    holding[0] -= 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in "abc"]
    with slots:  # all three queue up while the slot is held
        for t in threads:
            t.start()
            time.sleep(0.05)
    for t in threads:
        t.join()
    assert most[0] == 1 and order[:3] == ["a", "b", "c"] and order == ["a", "b", "c"] * 3
    two = FairSlots(2)
    with two, two:  # two holders at once
        pass
