#!/usr/bin/env bash
# Set up a fresh machine and run the demo on the bundled public-domain clip: prepare the subject,
# fit the talking head (cpu preset: static, mouth, face and fuse stages, about 8 minutes on
# 2 cores), score the held-out frames, make it speak new words, and export the static head as a PLY.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/talkgs prepare assets/obama2010_pd_en_20s_256.mp4 -o demo_subject --preview --force
.venv/bin/talkgs fit demo_subject --config cpu --force
.venv/bin/talkgs eval demo_subject
# New speech: the same speaker's other public-domain recording when ../shared is here, else the
# demo clip's own soundtrack.
speech=../shared/data/audio/obama_pd_en_33s.wav
[ -f "$speech" ] || speech=assets/obama2010_pd_en_20s_256.mp4
.venv/bin/talkgs render demo_subject --audio "$speech" -o demo_subject/talk.mp4 --force
.venv/bin/talkgs export demo_subject --ply demo_subject/head.ply --force
echo "demo subject: demo_subject/ (preview/contact_sheet.png, eval_side_by_side.mp4, talk.mp4, head.ply)"
echo "live preview: .venv/bin/talkgs view demo_subject"
