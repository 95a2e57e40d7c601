"""Batch rendering from a manifest (``talkgs render --manifest jobs.csv [--ray [ADDRESS]]``).

The manifest is a CSV file with a header row and the columns ``model`` (a model file or fitted subject folder),
``speech`` (any audio ffmpeg reads), ``out`` (the MP4 to write) and, optionally, ``options``: ``talkgs render``'s
drive options as ``key=value`` pairs separated by ``;`` (``pose=static;blink=none;size=256;background=white``).
Relative paths are relative to the manifest's folder. Every row is checked before anything runs.

Each job is ``render_speech``: its output is written to a hidden file beside ``out`` and renamed when whole, so an
output is complete or absent, never half-written. Locally the jobs run one after another; with ``--ray`` each is a
Ray task asking for ``RayConfig.task_cpus``/``task_gpus``, run again up to ``task_retries`` times when its worker
dies or it fails for a reason other than its input. Bad input (silent speech, a damaged model) fails that job with
its reason, the others go on; an existing ``out`` is skipped unless ``force``.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

from talkgs.errors import TalkgsError

COLUMNS = ("model", "speech", "out", "options")


@dataclass
class Job:
    row: int  # the manifest's line number (the header is line 1)
    model: Path
    speech: Path
    out: Path
    options: dict  # DriveConfig fields


@dataclass
class Outcome:
    job: Job
    status: str  # "done", "skipped" (the output exists) or "failed"
    reason: str = ""


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(text: str, where: str) -> dict:
    """DriveConfig fields of an ``options`` cell (``key=value;...``), checked against DriveConfig."""
    from talkgs.render.driver import DriveConfig
    from talkgs.utils.config import from_dict

    options = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        key, sep, value = part.partition("=")
        if not sep:
            raise TalkgsError(f"{where}: option {part!r} is not key=value")
        options[key.strip().replace("-", "_")] = _value(value.strip())
    try:
        from_dict(DriveConfig, options)
    except TalkgsError as e:
        raise TalkgsError(f"{where}: {str(e).removeprefix('config: ')}") from None
    return options


def read_manifest(path: str | Path) -> list[Job]:
    """The jobs of a manifest, every row checked (one line naming the first bad row)."""
    path = Path(path)
    if not path.is_file():
        raise TalkgsError(f"manifest {path} does not exist")
    base = path.resolve().parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip() for h in reader.fieldnames or []]
    except (UnicodeDecodeError, csv.Error) as e:
        raise TalkgsError(f"manifest {path} is not a CSV file ({e})") from None
    missing = [c for c in COLUMNS[:3] if c not in header]
    if missing:
        raise TalkgsError(f"manifest {path} needs the columns {', '.join(COLUMNS[:3])} (and optionally options) in "
                          f"a header row; missing: {', '.join(missing)}")
    jobs, outs = [], {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"{path.name} line {line}"
        if not all(row.get(c) for c in COLUMNS[:3]):
            raise TalkgsError(f"{where}: model, speech and out must all be given")
        out = (base / row["out"]).resolve()
        if out in outs:
            raise TalkgsError(f"{where}: {row['out']} is also the output of line {outs[out]}")
        outs[out] = line
        if out.suffix.lower() != ".mp4":
            raise TalkgsError(f"{where}: out must be an .mp4 file, got {row['out']}")
        for column in ("model", "speech"):
            if not (base / row[column]).exists():
                raise TalkgsError(f"{where}: {column} {row[column]} does not exist")
        jobs.append(Job(line, (base / row["model"]).resolve(), (base / row["speech"]).resolve(), out,
                        parse_options(row.get("options", ""), where)))
    if not jobs:
        raise TalkgsError(f"manifest {path} has no jobs")
    return jobs


@functools.lru_cache(maxsize=2)
def _model(path: str, mtime: float):
    """The fitted model at ``path`` (as of ``mtime``), loaded once per process: a manifest names few models for many
    jobs, and Ray runs a worker's tasks one after another in one process."""
    from talkgs.model.fitted import load_model

    return load_model(path)


def run_job(job: Job, force: bool = False) -> Outcome:
    """One job, in this process: done, skipped or failed with the reason (bad input never raises)."""
    from talkgs.render.driver import DriveConfig, render_speech

    if job.out.exists() and not force:
        return Outcome(job, "skipped", f"{job.out.name} exists (--force replaces it)")
    try:
        if not job.out.parent.is_dir():
            job.out.parent.mkdir(parents=True)
        model = _model(str(job.model), job.model.stat().st_mtime)
        render_speech(model, job.speech, job.out, DriveConfig(**job.options), force=True, progress=False)
    except TalkgsError as e:
        return Outcome(job, "failed", str(e))
    except OSError as e:  # a file that went away or a full disk: this job fails, the others go on
        return Outcome(job, "failed", f"{e.strerror or type(e).__name__}: {e.filename or ''}".rstrip(": "))
    return Outcome(job, "done")


def run_local(jobs: list[Job], force: bool = False) -> list[Outcome]:
    from talkgs.utils import log

    return [run_job(job, force) for job in log.progress(jobs, desc="jobs", unit="job")]


def run_on_ray(jobs: list[Job], force: bool = False, address: str | None = None, cfg=None) -> list[Outcome]:
    """Every job as a Ray task (``RayConfig``'s resources and retries); outcomes in manifest order."""
    import ray

    from talkgs.serve.config import RayConfig
    from talkgs.serve.server import start_ray
    from talkgs.utils import log

    rc = cfg or RayConfig()
    start_ray(address)
    task = ray.remote(num_cpus=rc.task_cpus, num_gpus=rc.task_gpus, max_retries=rc.task_retries,
                      retry_exceptions=True)(run_job)
    pending = {task.remote(job, force): job for job in jobs}
    outcomes: dict[int, Outcome] = {}
    with log.progress(total=len(jobs), desc="jobs", unit="job") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                outcomes[job.row] = ray.get(ready[0])
            except Exception as e:  # retries spent: the worker died every time, or the job kept raising
                _remove_partials(job.out)
                cause = getattr(e, "cause", None) or e
                outcomes[job.row] = Outcome(job, "failed", f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
                                            if str(cause) else type(cause).__name__)
            bar.update(1)
    return [outcomes[job.row] for job in jobs]


def _remove_partials(out: Path) -> None:
    """The hidden files ``render_speech`` writes before its rename, left by a worker that was killed."""
    for name in (f".{out.name}.tmp.mp4", f".{out.name}.mux.mp4"):
        (out.parent / name).unlink(missing_ok=True)


def summary(outcomes: list[Outcome]) -> dict:
    """Counts and the failures' reasons (a JSON-able dict)."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    return {**counts, "failures": [{"line": o.job.row, "out": str(o.job.out), "reason": o.reason}
                                   for o in outcomes if o.status == "failed"],
            "jobs": [{"line": o.job.row, "out": str(o.job.out), "status": o.status} for o in outcomes]}
