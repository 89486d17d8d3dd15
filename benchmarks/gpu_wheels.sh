#!/usr/bin/env bash
# The Python packages benchmarks/gpu_check.py needs on a GPU machine that has PyTorch,
# transformers, accelerate, numpy, pyarrow, pandas, Pillow and huggingface_hub (Python 3.12,
# x86-64, no network) but not trl, peft's pinned version, diffusers, deepspeed, datasets,
# polars, pydantic or imageio-ffmpeg: packed into .whl/gpu-site.tar.xz, which travels with
# the working tree (64 MiB in all for the device tool).
#
#     bash benchmarks/gpu_wheels.sh          # PYTHON=... to use another venv (needs torch)
#
# Why one archive rather than the wheels themselves: the wheels come to 68 MB without an
# ffmpeg (polars' runtime alone is a 54 MB wheel), over the limit; xz over the installed
# files packs them into ~40 MB. imageio-ffmpeg 0.8.1's own wheel carries a 172 MB ffmpeg:
# its Python code comes from its source archive, and the ffmpeg is the static 7.0.2 build
# (with libx264, which the renderer's MP4 writer uses) of imageio-ffmpeg 0.6.0's wheel,
# found through IMAGEIO_FFMPEG_EXE. DeepSpeed is published only as a source archive: its
# wheel is built here (pure Python; its CUDA ops compile at first use, with the machine's
# nvcc). Versions are the pins of constraints.txt.
#
# The archive is never committed: the script adds /.whl/ to .git/info/exclude (by hand:
# `echo /.whl/ >> .git/info/exclude`). Downloads and the staging folder stay in
# vpo-work/gpu-wheels/ (ignored). The one call a GPU session makes is in
# benchmarks/README.md, "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
STAGE=vpo-work/gpu-wheels
LIMIT=$((64 * 1024 * 1024))
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: "${PLATFORMS[@]}")

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# name==version from constraints.txt (names compared as pip does: case and -/_ ignored)
pins() {
  "$PYTHON" - "$@" <<'EOF'
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pins = {norm(n): v for n, v in (line.strip().split("==") for line in open("constraints.txt")
                                if "==" in line)}
print(" ".join(f"{n}=={pins[norm(n)]}" for n in sys.argv[1:]))
EOF
}

rm -rf "$STAGE" && mkdir -p "$STAGE"/{wheels,sdist,ffmpeg,pack/bin} .whl
echo "== wheels for Python 3.12 (pins of constraints.txt)"
"$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$STAGE/wheels" $(pins \
  trl peft diffusers datasets dill multiprocess pydantic pydantic_core annotated-types \
  typing-inspection typing_extensions hjson polars polars-runtime-32 importlib_metadata)
echo "== deepspeed and imageio-ffmpeg (without its ffmpeg) from their source archives"
"$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$STAGE/sdist" \
  $(pins deepspeed imageio-ffmpeg)
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$STAGE/wheels" "$STAGE"/sdist/*
echo "== ffmpeg 7.0.2 (static, libx264) from imageio-ffmpeg 0.6.0's wheel"
"$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$STAGE/ffmpeg" imageio-ffmpeg==0.6.0
"$PYTHON" -m zipfile -e "$STAGE"/ffmpeg/imageio_ffmpeg-0.6.0-*.whl "$STAGE/ffmpeg/x"
install -m 755 "$STAGE"/ffmpeg/x/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v7.0.2 \
  "$STAGE/pack/bin/ffmpeg"
encoders=$("$STAGE/pack/bin/ffmpeg" -hide_banner -encoders 2>/dev/null)
[[ $encoders == *libx264* ]] || { echo "this ffmpeg has no libx264" >&2; exit 1; }

echo "== installed for Python 3.12 into one folder, packed with xz"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/pack/site" \
  "${TARGET[@]}" "$STAGE"/wheels/*.whl
rm -rf "$STAGE/pack/site/bin"  # console scripts, with this machine's interpreter path
ls "$STAGE/wheels"
tar -C "$STAGE/pack" -cf - site bin | xz -T2 -6 >.whl/gpu-site.tar.xz

archive=$(stat -c %s .whl/gpu-site.tar.xz)
tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
       | awk '{s += $1} END {print s + 0}')
awk -v a="$archive" -v t="$tree" 'BEGIN {m = 1048576; printf "%s: %.1f MiB; working \
tree %.1f MiB; together %.1f of 64 MiB\n", ".whl/gpu-site.tar.xz", a / m, t / m, (a + t) / m}'
if ((archive + tree > LIMIT)); then
  echo "over the 64 MiB the device tool carries" >&2
  exit 1
fi
