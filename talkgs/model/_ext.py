"""Lazy, cached build of the hash-grid CUDA extension (cuda_ext/hashgrid) with ``torch.utils.cpp_extension.load``.

Nothing is compiled or imported at module import: the first call builds (about a minute, cached by torch under
``TORCH_EXTENSIONS_DIR``), later calls return the same module. Without CUDA or a compiler it returns None.
"""

from __future__ import annotations

import functools
import shutil
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE_DIR = Path(__file__).resolve().parents[2] / "cuda_ext" / "hashgrid"


def _missing_requirement() -> str | None:
    """Why the extension cannot be built here, or None when it can be tried."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return "no CUDA toolkit (nvcc) found"
    if shutil.which("c++") is None:
        return "no C++ compiler (c++) found"
    if not (SOURCE_DIR / "hashgrid.cu").is_file():
        return f"sources missing in {SOURCE_DIR}"
    return None


@functools.cache
def load_hashgrid_ext() -> ModuleType | None:
    """The compiled ``talkgs_hashgrid`` module, or None (with one warning) when it cannot be built."""
    reason = _missing_requirement()
    if reason is None:
        from torch.utils.cpp_extension import load

        from talkgs.utils.cpu_ext import clear_stale_build_lock

        try:
            clear_stale_build_lock("talkgs_hashgrid")
            return load(
                name="talkgs_hashgrid",
                sources=[str(SOURCE_DIR / "hashgrid.cpp"), str(SOURCE_DIR / "hashgrid.cu")],
                extra_include_paths=[str(SOURCE_DIR)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                verbose=False,
            )
        except Exception as exc:  # a failed build must not stop training; the torch path is equivalent
            reason = f"build failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
    warnings.warn(f"talkgs_hashgrid CUDA extension unavailable ({reason}); using the PyTorch hash grid", stacklevel=2)
    return None
