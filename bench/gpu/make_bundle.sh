#!/usr/bin/env bash
# Builds .device-carry/ (git-ignored, < 64 MiB): what a GPU host without network needs to run llm-launch
# and Triton (DESIGN section 10): a slim tarball of the nvidia-pytriton server (3.12 stub only) and cp312
# wheels of numpy<2 plus the small packages that host lacks. Run from the repository root after scripts/setup.
set -euo pipefail
out=.device-carry
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$out" && mkdir -p "$out/whl"

download=(python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$out/whl")
"${download[@]}" numpy==1.26.4 hydra-core==1.3.2 omegaconf==2.3.0 tritonclient==2.51.0 python-rapidjson \
  geventhttpclient gevent zope.event zope.interface greenlet brotli
python3 -m pip wheel --quiet --no-deps -w "$out/whl" antlr4-python3-runtime==4.9.3  # sdist only on PyPI

# tritonclient ships two 20 MB perf-analyzer binaries we never run: repack the wheel without them.
tmp=$(mktemp -d)
wheel=$(ls "$out"/whl/tritonclient-*.whl)
(cd "$tmp" && python3 -m zipfile -e "$OLDPWD/$wheel" . && rm -rf ./*.data/data/bin)
sed -i '/\.data\/data\/bin\//d' "$tmp"/tritonclient-*.dist-info/RECORD
rm "$wheel" && (cd "$tmp" && python3 -m zipfile -c "$OLDPWD/$wheel" ./*) && rm -rf "$tmp"

# The server: binaries, the Python backend, the 3.12 stub; the vendored libs minus libpython3.13.
tar -C "$site" -cJf "$out/tritonserver.tar.xz" \
  --exclude='python_backend_stubs/3.8' --exclude='python_backend_stubs/3.9' --exclude='python_backend_stubs/3.10' \
  --exclude='python_backend_stubs/3.11' --exclude='python_backend_stubs/3.13' --exclude='libpython3-*.13.so*' \
  pytriton/__init__.py pytriton/tritonserver nvidia_pytriton.libs
du -sh "$out"/* "$out"
