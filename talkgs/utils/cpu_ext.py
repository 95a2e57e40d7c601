"""Compiled CPU kernels (``talkgs/csrc/<name>.cpp``), built on first use and cached.

Why C++/OpenMP through ``torch.utils.cpp_extension`` rather than numba: the kernels take and return torch
tensors without copies, slot into ``torch.autograd.Function`` the way gsplat's CUDA kernels do, need no extra
runtime dependency (a C++ compiler is enough; torch ships the headers), and OpenMP splits tiles and points over
the cores. The first call compiles (about a minute; torch caches the build under ``TORCH_EXTENSIONS_DIR``, keyed
by the sources), later calls and processes reuse it.

Every kernel has a PyTorch twin that computes the same thing and is tested against it. Without a compiler, when
the build fails, or with ``TALKGS_CPU_KERNELS=0`` in the environment, the twin runs instead, and one line says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

from talkgs.utils import log

SOURCE_DIR = Path(__file__).resolve().parents[1] / "csrc"
ENV_SWITCH = "TALKGS_CPU_KERNELS"  # "0": always use the PyTorch twins
#: A build lock older than this many seconds was left by a build that was killed: a build takes about a minute
#: (the CPU kernels on 2 cores, the CUDA hash grid on an H200), so a live one is never taken for dead.
STALE_LOCK_S = 600.0


def clear_stale_build_lock(name: str) -> None:
    """Wait for another process's build of the extension ``name``, or remove its lock when that build died.

    torch's ``load`` guards a build with a lock file and waits for it without a time limit, so one build killed
    mid-way (Ctrl-C twice, a timeout, the OOM killer) left every later talkgs command hanging silently. Waiting
    says so in one line; a lock that outlives ``STALE_LOCK_S`` is removed, with one line, and this process builds.
    """
    from torch.utils.cpp_extension import _get_build_directory  # torch's own naming of the build folder

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    told = False
    while lock.exists():
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # the other build finished
            return
        if age > STALE_LOCK_S:
            log.warn(f"removing {lock}, left {age / 60:.0f} min ago by an interrupted build; building again")
            lock.unlink(missing_ok=True)
            return
        if not told:
            told = True
            log.info(f"waiting for another process's build of {name} (its lock {lock} is {age:.0f} s old; one "
                     f"older than {STALE_LOCK_S / 60:.0f} min is taken as left by a killed build)")
        time.sleep(0.5)


def _missing_requirement(name: str) -> str | None:
    """Why ``name`` cannot be built here, or None when it can be tried."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++) found"
    # torch builds with ninja from PATH; pip installs it beside the interpreter, which an unactivated venv
    # leaves off PATH.
    here = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=here) is not None:
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        return "ninja not found (pip install ninja)"
    if not (SOURCE_DIR / f"{name}.cpp").is_file():
        return f"sources missing in {SOURCE_DIR}"
    return None


@functools.cache
def load_cpu_ext(name: str) -> ModuleType | None:
    """The compiled module ``talkgs_cpu_<name>`` from ``talkgs/csrc/<name>.cpp``, or None (after one line on stderr
    saying why, once per reason) when it cannot be built; callers then run the PyTorch twin."""
    reason = _missing_requirement(name)
    if reason is None:
        from torch.utils.cpp_extension import load

        try:
            clear_stale_build_lock(f"talkgs_cpu_{name}")
            # No -ffast-math: the kernels must agree with their twins, and NaN/inf checks must keep working.
            # -fno-trapping-math changes no result; without it GCC will not vectorise a loop with selects.
            return load(name=f"talkgs_cpu_{name}", sources=[str(SOURCE_DIR / f"{name}.cpp")],
                        extra_cflags=["-O3", "-fopenmp", "-march=native", "-fno-trapping-math"],
                        extra_ldflags=["-fopenmp"],
                        verbose=False)
        except Exception as exc:  # a failed build must not stop the user: the twin computes the same
            lines = str(exc).strip().splitlines()
            reason = f"build failed: {lines[-1] if lines else type(exc).__name__}"
    if reason not in _told:  # one line for all the kernels that miss the same thing
        _told.add(reason)
        log.warn(f"compiled CPU kernels unavailable ({reason}); using their slower PyTorch versions")
    return None


_told: set[str] = set()
