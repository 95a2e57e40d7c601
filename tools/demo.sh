#!/usr/bin/env bash
# Set up a fresh machine and run the demo on the bundled public-domain clip: prepare the subject,
# fit the talking head (cpu preset: static, mouth, face and fuse stages, about 15 minutes on 2 cores),
# export the static head as a PLY.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/talkgs prepare assets/obama2010_pd_en_20s_256.mp4 -o demo_subject --preview --force
.venv/bin/talkgs fit demo_subject --config cpu --force
.venv/bin/talkgs export demo_subject --ply demo_subject/head.ply --force
echo "demo subject: demo_subject/ (preview/contact_sheet.png, fit/val/*.png, head.ply)"
