"""Options of ``talkgs serve`` and of the batch manifest (``ServeConfig``, ``RayConfig``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from talkgs.errors import TalkgsError

#: What a live session can send each frame as: JPEG (small, lossy), PNG or raw RGB (the renderer's exact pixels).
FRAME_FORMATS = ("jpeg", "png", "raw")
#: A client that reads frames slower than they are rendered: drop the oldest waiting frames, or close the session.
SLOW_CLIENT_POLICIES = ("drop", "close")


def is_loopback(host: str) -> bool:
    """True for an address that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass
class RayConfig:
    """How the app runs on Ray Serve (``talkgs serve --ray``) and how batch jobs run as Ray tasks."""

    replica_cpus: float = 1.0
    """CPUs each replica asks Ray for (its renders run on that many cores' worth of threads)."""
    replica_gpus: float = 0.0
    """GPUs each replica asks for (1 on a GPU node: a replica renders on its own GPU)."""
    min_replicas: int = 1
    """Replicas kept running when no session is open."""
    max_replicas: int = 2
    """Most replicas autoscaling starts (each loads torch and the models it is asked for)."""
    target_sessions: float = 2.0
    """Ongoing requests (live sessions, jobs) per replica that autoscaling aims at: a 256-px session takes about
    a third of a core on the CPU kernels (docs/serve.md), so 2 per replica keeps each at real time."""
    models_per_replica: int = 4
    """Models a replica keeps loaded (``serve.multiplexed``); the least recently used is dropped for another."""
    task_cpus: float = 1.0
    """CPUs each batch job (``talkgs render --manifest --ray``) asks for."""
    task_gpus: float = 0.0
    """GPUs each batch job asks for."""
    task_retries: int = 2
    """Times a failed or killed batch job is run again before it counts as failed."""

    def __post_init__(self) -> None:
        if self.replica_cpus <= 0 or self.task_cpus <= 0 or self.replica_gpus < 0 or self.task_gpus < 0:
            raise TalkgsError("replica_cpus and task_cpus must be positive, replica_gpus and task_gpus at least 0")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise TalkgsError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.target_sessions <= 0 or self.models_per_replica < 1 or self.task_retries < 0:
            raise TalkgsError("target_sessions must be positive, models_per_replica at least 1, task_retries >= 0")


@dataclass
class ServeConfig:
    """How ``talkgs serve`` listens, what it accepts and how much it keeps."""

    host: str = "127.0.0.1"
    """Address to bind. Loopback by default: the API renders real people's faces and takes uploads, so any other
    address needs a ``token``."""
    port: int = 8766
    """TCP port; 0 picks a free one (printed at start)."""
    token: str | None = None
    """Bearer token every request and WebSocket must carry (``Authorization: Bearer TOKEN``, or ``?token=`` on a
    WebSocket, which browsers cannot give headers); None: no check, allowed on loopback only."""
    device: str = "auto"
    """"auto" (CUDA when PyTorch sees a GPU, else the CPU, whatever device a model was fitted on), "cpu" or "cuda"."""
    models_cached: int = 4
    """Models kept loaded in one process (least recently used dropped first); a session holds its own."""
    max_sessions: int = 16
    """Live sessions one process accepts at once; one more is refused with a reason (4503)."""
    render_slots: int = 1
    """Renders that run at once in one process. On a CPU one: torch's threads already use every core, and two
    renders side by side would split them (docs/cpu.md); sessions take turns frame batch by frame batch."""
    send_queue_frames: int = 50
    """Rendered frames waiting for a slow client (2 s at 25 fps); what happens past it is ``slow_client``."""
    slow_client: str = "drop"
    """What happens when more than ``send_queue_frames`` still wait after ``slow_client_wait_s``: "drop": the
    oldest are dropped (counted, and said in the session's ``done`` message), so a client that falls behind sees
    the present; "close": the session ends with code 4408 and the reason."""
    slow_client_wait_s: float = 2.0
    """How long a full queue may take to drain (the client's next speech chunk is not read meanwhile) before
    ``slow_client`` acts: a burst of frames from one long chunk is not a slow client."""
    late_frames: str = "skip"
    """A live session whose frames fall behind its speech (more sessions than the machine renders in real time):
    "skip": frames already more than ``late_after_s`` past due are not rendered (counted as ``skipped`` in
    ``done``), so the session stays in sync at a lower frame rate; "keep": every frame is rendered, later and
    later. Frames are due at the first chunk's arrival + their audio time + the stream's latency."""
    late_after_s: float = 0.5
    """How late past due a frame may be and still be rendered (covers a client's chunking and one block's render)."""
    max_chunk_s: float = 10.0
    """Longest audio chunk a session takes in one message (larger ones end the session with 4413)."""
    max_session_s: float = 3600.0
    """Longest audio a session takes in all (memory stays flat, but a session must end)."""
    max_upload_mb: float = 50.0
    """Largest speech file a job takes; a bigger one is refused (413) before it is read to the end."""
    max_audio_s: float = 600.0
    """Longest speech a job renders."""
    jpeg_quality: int = 90
    """Quality of JPEG frames (1-100)."""
    tmp_dir: str | None = None
    """Where uploads and job outputs are written while a job runs (each job its own folder, removed after);
    None: the system's temporary folder."""
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise TalkgsError(f"port must be between 0 and 65535, got {self.port}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TalkgsError(f"unknown device {self.device!r} (choose from auto, cpu, cuda)")
        if self.late_frames not in ("skip", "keep"):
            raise TalkgsError(f"late_frames must be skip or keep, got {self.late_frames!r}")
        if self.late_after_s < 0:
            raise TalkgsError(f"late_after_s must be at least 0, got {self.late_after_s}")
        if self.slow_client not in SLOW_CLIENT_POLICIES:
            raise TalkgsError(f"slow_client must be one of {', '.join(SLOW_CLIENT_POLICIES)}, got {self.slow_client!r}")
        if min(self.models_cached, self.max_sessions, self.render_slots, self.send_queue_frames) < 1:
            raise TalkgsError("models_cached, max_sessions, render_slots and send_queue_frames must be at least 1")
        if min(self.max_chunk_s, self.max_session_s, self.max_upload_mb, self.max_audio_s,
               self.slow_client_wait_s) <= 0:
            raise TalkgsError("max_chunk_s, max_session_s, max_upload_mb, max_audio_s and slow_client_wait_s must be "
                              "positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise TalkgsError(f"jpeg_quality must be between 1 and 100, got {self.jpeg_quality}")
        if self.token is not None and len(self.token) < 16:
            raise TalkgsError("a token must be at least 16 characters (e.g. python -c 'import secrets; "
                              "print(secrets.token_urlsafe())')")

    def check_exposure(self) -> None:
        """Refuse a non-loopback address without a token (one line)."""
        if self.token is None and not is_loopback(self.host):
            raise TalkgsError(f"--host {self.host} is reachable from other machines: give --token (or set "
                              "TALKGS_SERVE_TOKEN) so that only clients with it are served")
