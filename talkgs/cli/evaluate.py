"""Evaluate a fitted subject on its held-out frames (PSNR, SSIM, LPIPS, LMD, lip and blink sync).

With --audio, measure lip sync of any video against speech instead, with no ground-truth video and no
SyncNet weights: the share of p/b/m phones during which the mouth closes, the audio-video offset
and the mouth-opening/speech-energy correlation. Run it on real footage with its own audio for the
ceiling a render can reach.

With --drive-ref, drive the fitted subject with the soundtrack of another person's real talking video
and compare the two mouths as MediaPipe sees them: aperture correlation at the best lag within 5
frames, that lag, and closure-event recall and precision, each beside its chance level.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=__doc__.splitlines()[0].rstrip("."), description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Examples:\n"
                              "  talkgs eval my_subject --json results.json\n"
                              "  talkgs eval --audio speech.wav --video rendered.mp4\n"
                              "  talkgs eval --audio real.mp4 --video real.mp4   # the ceiling, on real footage\n"
                              "  talkgs eval my_subject --drive-ref other_person.mp4   # against a real mouth")
    p.add_argument("subject", metavar="SUBJECT_DIR", nargs="?",
                   help="fitted subject (optional with --audio, where it only gives the frame rate)")
    p.add_argument("--json", metavar="PATH",
                   help="report file (default SUBJECT_DIR/eval_report.json; with --audio, <video stem>_lipsync.json "
                        "next to the video)")
    p.add_argument("--video", metavar="PATH",
                   help="side-by-side video to write, ground truth | render | error (default "
                        "SUBJECT_DIR/eval_side_by_side.mp4); with --audio, the video to measure")
    p.add_argument("--audio", metavar="SPEECH",
                   help="measure lip sync of --video against this speech (any file with an audio stream)")
    p.add_argument("--drive-ref", metavar="VIDEO",
                   help="drive SUBJECT_DIR (or a model file) with this real talking video's soundtrack and compare "
                        "the rendered mouth with the video's (report: <subject>/eval_drive_<video stem>.json)")
    p.add_argument("--ref-drive", choices=("audio", "video"), default="audio",
                   help="with --drive-ref: drive with the video's soundtrack (default) or with its tracked mouth "
                        "(code-path models, as talkgs render --drive)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="rendering device (default: the fit's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from talkgs.errors import TalkgsError

    if args.audio is not None:
        return _run_lipsync(args)
    if args.drive_ref is not None:
        return _run_drive_ref(args)
    if args.subject is None:
        raise TalkgsError("give SUBJECT_DIR to evaluate a fit, or --audio SPEECH --video VIDEO to measure lip sync")
    from talkgs.eval.evaluate import evaluate

    report = evaluate(args.subject, args.json, args.video, args.device)
    print(json.dumps({k: v for k, v in report.items() if k != "video"}, indent=1))
    return 0


def _run_drive_ref(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from talkgs.data import schema
    from talkgs.errors import TalkgsError
    from talkgs.eval.drive_ref import evaluate_drive_ref
    from talkgs.utils import log

    if args.subject is None:
        raise TalkgsError("--drive-ref needs SUBJECT_DIR (or a fitted model file) to drive")
    source, video = Path(args.subject), Path(args.drive_ref)
    if not video.is_file():
        raise TalkgsError(f"reference video {video} does not exist")
    folder = source if source.is_dir() else source.parent
    stem = video.stem if args.ref_drive == "audio" else f"{video.stem}_mouth"
    out = Path(args.json) if args.json else folder / schema.drive_report(stem)
    if not out.parent.is_dir():
        raise TalkgsError(f"cannot write {out}: folder {out.parent} does not exist")
    report = evaluate_drive_ref(source, video, args.device, drive=args.ref_drive)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_opening")}, indent=1))
    log.info(f"wrote {out}")
    return 0


def _run_lipsync(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from talkgs.errors import TalkgsError
    from talkgs.eval.lipsync import lipsync_metrics
    from talkgs.utils import log

    if args.video is None:
        raise TalkgsError("--audio needs --video VIDEO, the video to measure")
    video = Path(args.video)
    out = Path(args.json) if args.json else video.with_name(f"{video.stem}_lipsync.json")
    if not out.parent.is_dir():
        raise TalkgsError(f"cannot write {out}: folder {out.parent} does not exist")
    fps = None
    if args.subject is not None:
        from talkgs.data.subject import Subject

        fps = Subject(args.subject).fps  # the rate the render was made at
    report = lipsync_metrics(video, args.audio, fps=fps)
    text = json.dumps(report, indent=1)
    out.write_text(text + "\n")
    print(text)
    log.info(f"wrote {out}")
    return 0
