"""Where a CPU fit spends its time: every stage of the cpu preset, shortened, under the torch profiler.

    python tools/research/profile_cpu.py SUBJECT_DIR [--resolution 256] [--steps 40] [--out OUT.json]

SUBJECT_DIR is a prepared subject (``talkgs prepare``); it is copied (frames and tracking, not its fit) into a
temporary folder and fitted there with the cpu preset at ``--resolution``, each stage cut to ``--steps``
iterations (densification keeps its schedule, so few or no densify steps happen in a short run). Reported:

- seconds per iteration of each stage (from the fit report), and the full cpu-preset fit time extrapolated
  from them with the preset's iteration counts (an estimate: Gaussians are added by densification during the
  real static and mouth stages, which makes later iterations slower than these);
- the operators and kernels that take the time over the whole run (self CPU time, the profiler's table), with
  the compiled kernels' forward and backward under their autograd names (``_CompositeCpu``,
  ``_CompositeCpuBackward``, ``_ProjectCpu``, ``_HashGrid2DCpu`` ...).

Set TALKGS_CPU_KERNELS=0 to profile the PyTorch twins instead. Timing needs otherwise idle cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject", type=Path)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40, help="iterations per stage")
    ap.add_argument("--rows", type=int, default=20, help="operators listed")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from talkgs.render._cpu_backend import cpu_kernels
    from talkgs.train.config import FitConfig
    from talkgs.train.trainer import Trainer
    from talkgs.utils.config import load_section, merge

    preset = merge(load_section(FitConfig, "cpu", "fit"), {"resolution": args.resolution})
    short = dataclasses.replace(preset, stages=[dataclasses.replace(s, iterations=args.steps) for s in preset.stages])
    kernels = cpu_kernels() is not None  # built here, outside the profile
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "subject"
        shutil.copytree(args.subject, root, ignore=shutil.ignore_patterns("fit", "preview"))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            report = Trainer(root, short, force=True).run()
    per_it = {name: s["seconds"] / args.steps for name, s in report["stages"].items()}
    estimate = sum(per_it[s.name] * s.iterations for s in preset.stages)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=36)
    result = {
        "command": f"python tools/research/profile_cpu.py {args.subject} --resolution {args.resolution} "
                   f"--steps {args.steps}",
        "compiled_kernels": kernels, "torch_threads": torch.get_num_threads(), "resolution": args.resolution,
        "seconds_per_iteration": {k: round(v, 4) for k, v in per_it.items()},
        "preset_iterations": {s.name: s.iterations for s in preset.stages},
        "fit_seconds_extrapolated": round(estimate), "gaussians": report["gaussians"],
        "mouth_gaussians": report["mouth_gaussians"],
    }
    print(table)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "profile": table}, indent=1))


if __name__ == "__main__":
    main()
