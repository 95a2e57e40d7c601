"""Render a fitted subject speaking any audio (or its own held-out frames) to a video with the audio muxed."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help=__doc__.strip().rstrip("."), description=__doc__,
                       epilog="Examples: talkgs render my_subject --audio speech.wav -o talk.mp4;  "
                              "talkgs render my_subject --split test -o held_out.mp4;  "
                              "talkgs render --manifest jobs.csv [--ray [ADDRESS]]")
    p.add_argument("subject", metavar="SUBJECT_DIR|MODEL", nargs="?",
                   help="a fitted subject folder, or its fit/model.safetensors copied anywhere (--audio only: "
                        "--split needs the subject's frames)")
    p.add_argument("-o", "--output", metavar="OUT.mp4")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--manifest", metavar="JOBS.csv",
                     help="render many jobs: a CSV with the columns model, speech, out and optionally options "
                          "(key=value;... of the options below); see docs/serve.md")
    src.add_argument("--audio", metavar="SPEECH", help="any audio ffmpeg reads; the video lasts as long as it")
    src.add_argument("--drive", metavar="VIDEO",
                     help="another person's talking video: its tracked mouth moves the head and its soundtrack is "
                          "muxed (a model fitted with head.drive: code)")
    src.add_argument("--split", choices=("test", "train"),
                     help="render these frames of the subject with their own audio, poses and torso (frame i of "
                          "the output is frame start+i of frames.mp4); the default without --audio is test")
    p.add_argument("--pose", default="replay", metavar="replay|static|FILE",
                   help="replay: the training head motion forward and backward (default); static: hold one frame "
                        "(--static-frame); FILE: .npy [T,4,4] or .npz with w2c world-to-camera poses")
    p.add_argument("--static-frame", type=int, metavar="N", help="frame held by --pose static")
    p.add_argument("--yaw", type=float, default=0.0, help="turn the head about its vertical axis (degrees)")
    p.add_argument("--pitch", type=float, default=0.0, help="tilt the head up or down (degrees)")
    p.add_argument("--blink", choices=("natural", "none", "auto"), default="natural",
                   help="natural: the training blinks; none: eyes open; auto: synthetic blinks at a natural rate")
    p.add_argument("--background", default="original", metavar="original|COLOUR|IMAGE",
                   help="the subject's background plate, a colour (white, #00ff00, 0,255,0) or an image file")
    p.add_argument("--size", type=int, metavar="PX", help="output side in pixels (default: the fit's resolution)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="rendering device (default: the fit's)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (--manifest: existing outputs are "
                                                          "skipped without it)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="--manifest: run each job as a Ray task, on a local cluster or the one at ADDRESS")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from talkgs.errors import TalkgsError
    from talkgs.utils import log

    if args.manifest is not None:
        if args.subject is not None or args.output is not None:
            raise TalkgsError("--manifest names each job's model and output in its rows: give neither SUBJECT_DIR "
                              "nor -o")
        return _render_manifest(args)
    if args.subject is None or args.output is None:
        raise TalkgsError("give SUBJECT_DIR|MODEL and -o OUT.mp4 (or --manifest JOBS.csv)")
    if args.ray is not None:
        raise TalkgsError("--ray runs the jobs of a --manifest")
    if args.audio is None and args.drive is None:
        return _render_split(args)
    from talkgs.render.driver import DriveConfig, render_speech

    cfg = DriveConfig(pose=args.pose, static_frame=args.static_frame, yaw=args.yaw, pitch=args.pitch,
                      blink=args.blink, background=args.background, size=args.size)
    summary = render_speech(args.subject, args.audio or args.drive, args.output, cfg, args.device, args.force,
                            drive_video=args.drive is not None)
    log.info(f"wrote {summary['output']}: {summary['frames']} frames at {summary['fps']:g} fps "
             f"({summary['duration_s']:.2f} s; audio {summary['audio_s']:.2f} s), {summary['size']} px")
    return 0


def _render_manifest(args: argparse.Namespace) -> int:
    from talkgs.serve import batch
    from talkgs.utils import log

    jobs = batch.read_manifest(args.manifest)
    if args.ray is None:
        outcomes = batch.run_local(jobs, args.force)
    else:
        outcomes = batch.run_on_ray(jobs, args.force, args.ray or None)
    result = batch.summary(outcomes)
    log.info(f"{result['done']} done, {result['skipped']} skipped (output exists), {result['failed']} failed")
    for failure in result["failures"]:
        log.warn(f"line {failure['line']} ({failure['out']}): {failure['reason']}")
    return 1 if result["failed"] else 0


def _render_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from talkgs.data import schema
    from talkgs.errors import TalkgsError
    from talkgs.eval.evaluate import load_fitted, mux_split_audio, render_frame
    from talkgs.utils import log, media
    from talkgs.utils.fs import check_output_file

    split = args.split or "test"
    out = Path(args.output)
    if not (Path(args.subject) / schema.MANIFEST).is_file():
        raise TalkgsError(f"--split renders a subject's own frames: {args.subject} is not a subject folder "
                          "(a model file alone renders --audio)")
    check_output_file(out, args.force)
    model, ctx = load_fitted(args.subject, args.device)
    frames = ctx.test_indices if split == "test" else ctx.train_indices
    res = ctx.resolution
    tmp = out.with_name(f".{out.name}.tmp.mp4")
    try:
        with torch.no_grad(), media.VideoWriter(tmp, (res, res), ctx.subject.fps, crf=14, preset="veryfast",
                                                 pix_fmt="yuv420p") as writer:
            for i in log.progress(frames, desc="render", unit="frame"):
                writer.write(media.to_uint8(render_frame(model, ctx, int(i))[1].image[0]))
        mux_split_audio(ctx.subject, tmp, out, int(frames[0]))
    finally:
        tmp.unlink(missing_ok=True)
    log.info(f"wrote {out}: {len(frames)} frames ({split} split, frames {frames[0]}..{frames[-1]})")
    return 0
