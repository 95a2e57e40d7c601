"""Sharing the cores with other jobs: how long OpenMP's idle threads spin before they sleep.

torch's parallel loops (ATen's OpenMP backend) and talkgs' compiled kernels (``talkgs/csrc``) run on one OpenMP
runtime, the libgomp torch ships: the kernels link ``libgomp.so.1`` and the loader resolves it to the copy torch
has loaded (checked in ``/proc/self/maps``). After each parallel loop and at each barrier, libgomp's threads spin
for ``GOMP_SPINCOUNT`` iterations before they sleep: 300 000 by default, about a millisecond. On idle cores that
saves a wake-up per loop. On shared cores it is what collapses a job: a training step runs thousands of short
loops, and every one of them ends with a thread spinning on a core that another process's thread (or this
process's own peer, descheduled) needs in order to finish its share. docs/cpu.md has the measurements.

``share_cores`` shortens the spin before torch loads libgomp (libgomp reads the variable once, when it loads),
so it runs when ``talkgs`` is imported: the CLI and any program that imports talkgs before torch. A user's own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is kept. ``CoreShare`` then fits the thread count to the cores other
jobs leave free. ``TALKGS_SHARE_CORES=0`` in the environment turns both off (torch's and libgomp's defaults, as
before issue 29: for measuring, or for a job pinned to its own cores).
"""

from __future__ import annotations

import os
import sys
import threading
import time

ENV_SWITCH = "TALKGS_SHARE_CORES"  # "0": leave OpenMP's spin and torch's thread count alone
#: libgomp's spin count for talkgs' processes: a thread waits about this many pause instructions for the next
#: parallel loop before it sleeps (libgomp's default: 300 000). Measured in docs/cpu.md: long enough that the
#: back-to-back loops of a training step on idle cores do not wait on wake-ups, short enough that a spinning
#: thread gives the core back within a few microseconds.
SPIN_COUNT = 10_000
#: ``CoreShare`` samples the machine's load at most this often (seconds): one sample reads /proc/stat and the
#: stat files of this process and its children, a few tens of microseconds.
EVERY_S = 0.25
#: Weight of a new sample in ``CoreShare``'s running measure of the other processes' CPU use (an exponential
#: average): a neighbour that starts or stops is followed within a second or two, a burst of one sample is not.
SMOOTHING = 0.3


def share_cores() -> bool:
    """Set ``GOMP_SPINCOUNT`` to ``SPIN_COUNT`` unless torch is imported already or the user chose a wait policy;
    True when it was set."""
    if (os.environ.get(ENV_SWITCH) == "0" or "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ
            or "GOMP_SPINCOUNT" in os.environ):
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


def _ticks(path: str) -> int:
    """CPU time (clock ticks) of the process whose stat file is ``path``, with its waited-for children's."""
    with open(path, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime


def _children(pid: int) -> list[int]:
    """The process's child processes (the video encoder, ffmpeg's decoder): their work is its own."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


class CoreShare:
    """Keeps torch's thread count at the cores other processes leave free.

    OpenMP splits every parallel loop into one share per thread and waits for the last; a thread that shares its
    core with another process's busy thread finishes its share late, and the whole loop waits (docs/cpu.md: two
    fits side by side ran 5.3x slower each, beside a spin loop 3.2x). So every ``every_s`` seconds ``update``
    measures the CPU time the rest of the machine used since the last sample (``/proc/stat``'s busy time less this
    process's and its children's), smooths it, and sets torch's thread count (which the compiled kernels follow)
    to the cores left, at least 1. Two talkgs jobs side by side settle at one thread each; alone, a job keeps all
    its cores. CPU time rather than counts of runnable tasks: a child that wakes and sleeps (the encoder's
    threads) between two reads does not count as a neighbour. Where ``/proc`` is missing it does nothing.
    """

    def __init__(self, every_s: float = EVERY_S, smoothing: float = SMOOTHING):
        self.every_s = every_s
        self.smoothing = smoothing
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # A user's OMP_NUM_THREADS is the most this process may use.
        limit = os.environ.get("OMP_NUM_THREADS", "")
        self.cores = min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores
        self.others = 0.0  # cores' worth of CPU time the rest of the machine used, smoothed
        self._available = (os.environ.get(ENV_SWITCH) != "0" and os.path.exists("/proc/stat")
                           and os.path.exists("/proc/self/stat"))
        self._hz = os.sysconf("SC_CLK_TCK") if self._available else 100
        self._last: tuple[float, int, int] | None = None  # (time, machine's busy ticks, this process's ticks)
        self._wanted: int | None = None

    def _sample(self) -> tuple[float, int, int]:
        with open("/proc/stat", "rb") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        busy = sum(cpu[:3]) + sum(cpu[5:8])  # user, nice, system, irq, softirq, steal (not idle, iowait)
        pid = os.getpid()
        mine = _ticks(f"/proc/{pid}/stat")
        for kid in _children(pid):
            try:
                mine += _ticks(f"/proc/{kid}/stat")
            except OSError:  # it ended: its time is in our cutime once waited for
                pass
        return time.monotonic(), busy, mine

    def update(self) -> int | None:
        """Sample (at most every ``every_s``) and set the thread count; the count set, or None (no change)."""
        if not self._available:
            return None
        if self._last is not None and time.monotonic() - self._last[0] < self.every_s:
            return None
        now = self._sample()
        if self._last is None:
            self._last = now
            return None
        dt = now[0] - self._last[0]
        used = (now[1] - self._last[1]) - (now[2] - self._last[2])  # ticks the others ran
        self._last = now
        self.others += self.smoothing * (max(0.0, used / (dt * self._hz)) - self.others)
        wanted = min(self.cores, max(1, self.cores - round(self.others)))
        if wanted == self._wanted:
            return None
        import torch

        self._wanted = wanted
        if wanted == torch.get_num_threads():
            return None
        torch.set_num_threads(wanted)
        return wanted


#: The one ``CoreShare`` of this process: the training loop and the renderer call its ``update``.
CORES = CoreShare()


class FairSlots:
    """At most ``slots`` holders at once, granted in arrival order (``with slots: ...``).

    ``threading.Semaphore`` makes no ordering promise: a thread that releases and asks again at once can win again
    and again, so one busy viewer tab or one server session starves the others. Tickets make every waiting thread
    get its turn after those that asked before it.
    """

    def __init__(self, slots: int = 1):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self._cond = threading.Condition()
        self._next = 0  # next ticket handed out
        self._serving = 0  # the next ticket to be granted
        self._active = 0  # holders now

    def __enter__(self) -> FairSlots:
        with self._cond:
            ticket = self._next
            self._next += 1
            self._cond.wait_for(lambda: self._serving == ticket and self._active < self.slots)
            self._serving += 1
            self._active += 1
            self._cond.notify_all()  # the next ticket may fit in another free slot
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()
