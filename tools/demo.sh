#!/usr/bin/env bash
# Set up a fresh machine and run the demo on the bundled public-domain clip: prepare the subject,
# fit the static Gaussian head (cpu preset, about 5 minutes on 2 cores), export it as a PLY.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/talkgs prepare assets/obama2010_pd_en_20s_256.mp4 -o demo_subject --preview --force
.venv/bin/talkgs fit demo_subject --config cpu --force
.venv/bin/talkgs export demo_subject --ply demo_subject/head.ply --force
echo "demo subject: demo_subject/ (preview/contact_sheet.png, fit/val/*.png, head.ply)"
