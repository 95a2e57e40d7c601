"""Open a fitted subject in a local web viewer: live rendering, orbit camera, synced audio."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help=__doc__.strip().rstrip("."), description=__doc__,
                       epilog="Example: talkgs view my_subject  (then open the printed URL; Ctrl-C stops it)")
    p.add_argument("subject", metavar="SUBJECT_DIR", help="subject folder fitted by talkgs fit")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
                        "viewer, and the subject's face, to the network)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any free port)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="rendering device (default auto: CUDA when PyTorch sees a GPU)")
    p.add_argument("--size", type=int, metavar="PX",
                   help="full viewer resolution (default: the fit's resolution on CPU, the subject's frame "
                        "size on a GPU)")
    p.add_argument("--blink", choices=("natural", "none", "auto"), default="natural",
                   help="blink mode a new tab starts with (the page can switch it)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from talkgs.utils import log
    from talkgs.viewer.config import ViewerConfig
    from talkgs.viewer.server import serve

    cfg = ViewerConfig(host=args.host, port=args.port, device=args.device, size=args.size, blink=args.blink)

    def ready(server) -> None:
        engine = server.engine
        log.info(f"viewer of {engine.subject_name}: {engine.size} px on {engine.device}, "
                 f"{len(engine.clips)} clip(s) of its own; Ctrl-C stops it")
        print(server.url, flush=True)  # on stdout, even with --quiet: the one thing a user must see

    try:
        serve(args.subject, cfg, ready)
    except KeyboardInterrupt:  # the normal way to stop a server, not an error
        log.info("viewer stopped")
    return 0
