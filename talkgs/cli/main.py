"""talkgs: photorealistic Gaussian-splatting talking heads.

Run ``talkgs COMMAND --help`` for each command.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from talkgs import __version__
from talkgs.errors import TalkgsError
from talkgs.utils import log


def build_parser() -> argparse.ArgumentParser:
    from talkgs.cli import evaluate, export, fit, prepare, render, serve, view

    parser = argparse.ArgumentParser(prog="talkgs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"talkgs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (prepare, fit, evaluate, render, export, view, serve):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.set_quiet(args.quiet)
    try:
        return int(args.run(args) or 0)
    except TalkgsError as e:
        print(f"talkgs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("talkgs: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"talkgs: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                  file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
