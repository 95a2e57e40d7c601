#!/usr/bin/env bash
# Set up a fresh machine and run the demo on the bundled public-domain clip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/talkgs prepare assets/obama2010_pd_en_20s_256.mp4 -o demo_subject --preview --force
echo "demo subject: demo_subject/ (look at demo_subject/preview/contact_sheet.png)"
