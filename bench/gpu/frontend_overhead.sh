#!/usr/bin/env bash
# The OpenAI front end's overhead on a host with cores to spare (the GPU host's 16), token source model:
#   bench/gpu/frontend_overhead.sh bundle   here, after scripts/setup and one `openai_bench.py --backend source`
#                                           run: builds .device-carry-frontend/ (< 64 MiB)
#   bench/gpu/frontend_overhead.sh run      there (carry .device-carry-frontend): Triton with the token source,
#                                           the front end beside it, openai_bench.py --triton against the pair
set -euo pipefail
carry=.device-carry-frontend

bundle() {
  local site source tokenizer pins
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  source=$(find /tmp -maxdepth 4 -path '/tmp/openai-bench-*/source/model_repository/source' | head -1)  # openai_bench.py's
  tokenizer=$(sed -n 's/.*key: "tokenizer_dir" value: { string_value: "\(.*\)" }.*/\1/p' "$source/config.pbtxt")
  rm -rf "$carry" && mkdir -p "$carry/whl" "$carry/repository/source/1" "$carry/tokenizer"
  cp "$source/config.pbtxt" "$carry/repository/source/"
  cp bench/token_source.py "$carry/repository/source/1/model.py"
  cp "$tokenizer"/tokenizer.json "$tokenizer"/tokenizer_config.json "$tokenizer"/chat_template.jinja "$carry/tokenizer/"
  # the versions this checkout's .venv runs; the host has the rest (aiohttp, grpcio, transformers, ...)
  mapfile -t pins < <(.venv/bin/pip list --format=freeze 2>/dev/null | grep -E \
    '^(tritonclient|fastapi|starlette|pydantic|pydantic_core|annotated-types|typing-inspection|uvicorn|httptools|annotated-doc|typing_extensions|python-rapidjson)==')
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$carry/whl" numpy==1.26.4 "${pins[@]}"
  local tmp wheel  # tritonclient without its two perf-analyzer binaries
  tmp=$(mktemp -d) && wheel=$(ls "$carry"/whl/tritonclient-*.whl)
  (cd "$tmp" && python3 -m zipfile -e "$OLDPWD/$wheel" . && rm -rf ./*.data/data/bin)
  sed -i '/\.data\/data\/bin\//d' "$tmp"/tritonclient-*.dist-info/RECORD
  rm "$wheel" && (cd "$tmp" && python3 -m zipfile -c "$OLDPWD/$wheel" ./*) && rm -rf "$tmp"
  tar -C "$site" -cJf "$carry/tritonserver.tar.xz" --exclude='libpython3-*.13.so*' pytriton/tritonserver/bin \
    pytriton/tritonserver/backends/python pytriton/tritonserver/python_backend_stubs/3.12 nvidia_pytriton.libs
  du -sh "$carry"
}

run() {
  local site=/tmp/site out=${OUT:-/tmp/out} stubs libdir
  # numpy < 2 for the stub only (DESIGN section 6), in a venv of its own first on the server's PATH (the stub
  # takes its sys.path from that python); the host's transformers keeps its numpy 2
  python3 -m venv --without-pip /tmp/stub-env
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target \
    "$(/tmp/stub-env/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" "$carry"/whl/numpy-*.whl
  local wheels
  mapfile -t wheels < <(find "$carry/whl" -name '*.whl' ! -name 'numpy-*')
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
  tar -xJf "$carry/tritonserver.tar.xz" -C "$site"
  stubs=$site/pytriton/tritonserver
  mkdir -p /tmp/backends/python "$out"
  cp "$stubs"/backends/python/libtriton_python.so "$stubs"/backends/python/triton_python_backend_utils.py \
    "$stubs"/python_backend_stubs/3.12/triton_python_backend_stub /tmp/backends/python/
  sed -i "s#\"/[^\"]*hf-smollm2[^\"]*\"#\"$PWD/$carry/tokenizer\"#" "$carry/repository/source/config.pbtxt"
  export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OPENAI_BENCH_KEY=bench
  libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  export LD_LIBRARY_PATH=$site/nvidia_pytriton.libs:$libdir
  nproc && python3 -c 'import numpy, fastapi; print("numpy", numpy.__version__, "fastapi", fastapi.__version__)'
  trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
  PATH=/tmp/stub-env/bin:$PATH PYTHONPATH='' "$stubs/bin/tritonserver" --model-repository "$PWD/$carry/repository" --backend-directory /tmp/backends \
    --grpc-address 127.0.0.1 --grpc-port 18001 --http-address 127.0.0.1 --http-port 18000 --allow-metrics false \
    > "$out/triton.log" 2>&1 &
  python3 -m launcher.frontend --triton 127.0.0.1:18001 --model source --served-name smollm2 --port 19000 \
    --tokenizer "$PWD/$carry/tokenizer" --api-key-env OPENAI_BENCH_KEY > "$out/openai.log" 2>&1 &
  local front=$! ready=0
  for _ in $(seq 120); do  # the front end is ready once Triton and the model are
    if python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:19000/health/ready", timeout=2)' \
        2>/dev/null; then ready=1 && break; fi
    sleep 1
  done
  [ "$ready" = 1 ] || { tail -n 20 "$out/triton.log" "$out/openai.log"; exit 1; }
  python3 bench/openai_bench.py --triton 127.0.0.1:18001 --openai http://127.0.0.1:19000/v1 --model source \
    --served-name smollm2 --tokenizer "$PWD/$carry/tokenizer" --api-key-env OPENAI_BENCH_KEY \
    --frontend-pid "$front" --rounds "${ROUNDS:-9}" | tee "$out/bench.txt"
}

"${1:?bundle or run}"
