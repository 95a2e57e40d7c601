#!/usr/bin/env bash
# Build what tools/gpu_check.py needs on a bare GPU machine with no network, inside the device tool's
# 64-MiB carry limit (repo included):
#   .whl/*.whl              gsplat, kornia, kornia_rs, imageio-ffmpeg for Python 3.12 x86-64 (the GPU image
#                           lacks them). gsplat ships glm's 20-MB documentation and tests, and imageio-ffmpeg
#                           a 170-MB ffmpeg: both wheels are repacked without them;
#   .whl/ffmpeg.xz          a static ffmpeg 4.2.2 (imageio-ffmpeg 0.4.9's), xz-compressed; gpu_check.py
#                           unpacks it and points IMAGEIO_FFMPEG_EXE at it;
#   .whl/subject/           the prepared subject (default: the anchor clip at 512, prepared here if missing) with
#                           the features both drives read (mel; visemes and cepstra) and, of the canonical
#                           landmarks, only the lip and jaw points the mouth code reads (the rest zero, which
#                           compresses to nothing: 1 MB instead of 9).
#   tools/gpu_carry.sh [SUBJECT_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
W="$ROOT/.whl"
SUBJECT="${1:-$ROOT/outputs/gpu/anchor512}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# A subject prepared before the code path carried mel alone: prepare it again.
if [ ! -f "$SUBJECT/subject.json" ] || [ ! -f "$SUBJECT/audio_visemes.npy" ] || [ ! -f "$SUBJECT/audio_cepstra.npy" ]; then
    "$ROOT/.venv/bin/talkgs" prepare "$ROOT/../shared/data/video/anchor_en_71s_512.mp4" -o "$SUBJECT" \
        --config quality --audio-encoder mel,visemes,cepstra --force
fi

rm -rf "$W" && mkdir -p "$W"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux2010_x86_64)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           "${PLATFORMS[@]}" -d "$1" "$2"; }
dl "$W" kornia==0.9.0
dl "$W" kornia_rs==0.2.0
dl "$TMP/full" gsplat==1.5.3
dl "$TMP/full" imageio-ffmpeg==0.8.1
dl "$TMP/old" imageio-ffmpeg==0.4.9

# Repack a wheel without the paths matching $2 (pip installs a wheel whose RECORD lists missing files).
slim() {
    local wheel="$1" drop="$2" dir="$TMP/unpack"
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$dir" && unzip -q "$wheel" && find . -path "$drop" -prune -exec rm -rf {} + && zip -qr -9 "$W/$(basename "$wheel")" .)
}
slim "$(ls "$TMP"/full/gsplat-*.whl)" './gsplat/cuda/csrc/third_party/glm/[dt][oe][cs]*'
slim "$(ls "$TMP"/full/imageio_ffmpeg-*.whl)" './imageio_ffmpeg/binaries/ffmpeg-*'
(cd "$TMP/old" && unzip -q imageio_ffmpeg-*.whl 'imageio_ffmpeg/binaries/ffmpeg-*' \
    && xz -9e -T0 -c imageio_ffmpeg/binaries/ffmpeg-* > "$W/ffmpeg.xz")

mkdir -p "$W/subject"
cp -a "$SUBJECT"/. "$W/subject/"
rm -rf "$W/subject/fit" "$W/subject/preview"
"$PY" - "$W/subject/landmarks.npz" <<'PYEOF'
import sys

import numpy as np

from talkgs.model.mouth_code import MOUTH_IDS

path = sys.argv[1]
with np.load(path) as z:
    kept = {k: z[k] for k in z.files}
mouth = np.zeros_like(kept["canonical"])
mouth[:, list(MOUTH_IDS)] = kept["canonical"][:, list(MOUTH_IDS)]
kept["canonical"] = mouth
np.savez_compressed(path, **kept)
PYEOF
du -sh "$W"/* | sort -h
echo "carried tree: $(( ($(git -C "$ROOT" ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + $(du -sb "$W" | cut -f1)) / 1048576 )) MiB of 64"
