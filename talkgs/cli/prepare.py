"""Turn a talking video into a tracked, segmented subject folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help=__doc__.strip().rstrip("."), description=__doc__,
        epilog="Example: talkgs prepare talk.mp4 -o my_subject --preview",
    )
    p.add_argument("video", help="any video ffmpeg reads (container, codec, rotation and frame rate are handled)")
    p.add_argument("-o", "--output", required=True, metavar="SUBJECT_DIR", help="subject folder to write")
    p.add_argument("--size", type=int, help="side of the square output frames in pixels (default 512)")
    p.add_argument("--fps", type=float, help="output frame rate (default 25)")
    p.add_argument("--audio-encoder", action="append", metavar="NAME",
                   help="audio features to compute: mel, phonemes, visemes, cepstra, hubert, wav2vec2; repeat "
                        "or comma-separate (default mel,phonemes,visemes,cepstra)")
    p.add_argument("--av-offset", metavar="auto|N",
                   help="correct the audio-video offset: 'auto' (default) estimates it, N forces N frames "
                        "(positive: the audio is late)")
    p.add_argument("--allow-upscale", action="store_true",
                   help="upscale a head crop smaller than --size instead of keeping its own size")
    p.add_argument("--preview", action="store_true",
                   help="also write preview/overlay.mp4 and preview/contact_sheet.png")
    p.add_argument("--config", metavar="PRESET", help="preset name (cpu, quality, tiny) or a YAML file")
    p.add_argument("--force", action="store_true",
                   help="write into an existing subject folder, replacing talkgs' own files only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from talkgs.errors import TalkgsError
    from talkgs.prepare.config import PrepareConfig
    from talkgs.prepare.pipeline import prepare
    from talkgs.utils.config import load_section, merge

    cfg = load_section(PrepareConfig, args.config, "prepare")
    overrides: dict = {"video": {}, "audio": {}}
    if args.size is not None:
        if args.size < 16:
            raise TalkgsError(f"--size must be at least 16 px, got {args.size}")
        overrides["video"]["size"] = args.size
    if args.fps is not None:
        if args.fps <= 0:
            raise TalkgsError(f"--fps must be positive, got {args.fps}")
        overrides["video"]["fps"] = args.fps
    if args.allow_upscale:
        overrides["video"]["allow_upscale"] = True
    if args.audio_encoder:
        names = [n.strip() for item in args.audio_encoder for n in item.split(",") if n.strip()]
        overrides["audio"]["encoders"] = names
    if args.av_offset is not None:
        overrides["audio"]["av_offset"] = args.av_offset
    if args.preview:
        overrides["preview"] = True
    cfg = merge(cfg, overrides)
    prepare(args.video, args.output, cfg, force=args.force)
    return 0
