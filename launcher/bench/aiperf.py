"""aiperf (NVIDIA's LLM benchmark client) from its own venv: where it is, its offline tokenizer, one run.

Offline, two things in aiperf 0.13 need working around (read in its ``aiperf/common/tokenizer.py``):

* ``--tokenizer builtin`` is tiktoken's ``o200k_base``, whose BPE file tiktoken downloads from
  openaipublic.blob.core.windows.net on first use (so is aiperf's fallback when ``--tokenizer`` is unset and the
  model name looks like a placeholder). We always pass the deployment's own tokenizer.
* With ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE``), ``Tokenizer.from_pretrained`` loads every name through
  ``huggingface_hub.snapshot_download(name, local_files_only=True)``, which rejects a folder path
  (``HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name'``). Without offline mode
  a folder loads, but nothing then keeps aiperf and its child processes off the hub. So :func:`tokenizer_cache`
  copies the tokenizer files into a private Hugging Face cache as the repository ``llm-launch/tokenizer``, and
  aiperf runs with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing there: it finds that snapshot on disk.

aiperf also leaves directories in the temp dir after each run (``aiperf_mmap_<id>``, its IPC sockets' folder), so
each run gets a temp dir of its own (``TMPDIR``), removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from launcher.bench.settings import BenchSettings
from launcher.errors import user_error

REPO = Path(__file__).resolve().parents[2]
BENCH_VENV = REPO / ".venv-bench"
AIPERF_ENV = "LLM_LAUNCH_AIPERF"  # another aiperf executable (0.13.x) to run instead of .venv-bench's
AIPERF_SERIES = "0.13."
SETUP_FIX = "run scripts/setup --bench (it builds .venv-bench with aiperf 0.13.0)"
TOKENIZER_REPO = "llm-launch/tokenizer"
TOKENIZER_FILES = ("config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*",
                   "merges.txt", "chat_template*", "*.tiktoken")
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")  # the launcher's Python must not leak into aiperf's
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d+\s+(?P<level>[A-Z]+)\s+(?P<message>.*?)(?:\s+\([\w.]+:\d+\))?")
ERROR_MESSAGES = 3
STOP_TIMEOUT_S = 10.0


def find_aiperf() -> Path:
    """``$LLM_LAUNCH_AIPERF``, else ``.venv-bench/bin/aiperf`` in the repository."""
    override = os.environ.get(AIPERF_ENV)
    executable = Path(override) if override else BENCH_VENV / "bin" / "aiperf"
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        raise user_error(AIPERF_ENV if override else str(executable), f"no aiperf executable at {executable}",
                         SETUP_FIX)
    return executable


def aiperf_version(executable: Path) -> str:
    """``aiperf --version``; fails unless it is the 0.13 series whose export files this package reads."""
    try:
        done = subprocess.run([str(executable), "--version"], capture_output=True, text=True, timeout=120,
                              env=_clean_environment(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise user_error(str(executable), f"does not run: {err}", SETUP_FIX) from None
    version = done.stdout.strip()
    if done.returncode != 0 or not version.startswith(AIPERF_SERIES):
        shown = version or done.stderr.strip()[-300:]
        raise user_error(str(executable), f"reports '{shown}', not aiperf {AIPERF_SERIES}x", SETUP_FIX)
    return version


def tokenizer_cache(tokenizer_dir: Path, hub_cache: Path) -> str:
    """Copy ``tokenizer_dir``'s tokenizer files into ``hub_cache`` as the hub repository ``llm-launch/tokenizer``.

    The layout is huggingface_hub's (``models--llm-launch--tokenizer/refs/main`` names the snapshot
    ``snapshots/<sha1 of the files>/``); returns the name to pass as ``--tokenizer``.
    """
    if not tokenizer_dir.is_dir():
        raise user_error(str(tokenizer_dir), "is not a directory", "bench a deployment whose model has a "
                         "Hugging Face directory with its tokenizer")
    files = sorted({path for pattern in TOKENIZER_FILES for path in tokenizer_dir.glob(pattern) if path.is_file()})
    if not any(path.name in TOKENIZER_MARKERS for path in files):
        raise user_error(str(tokenizer_dir), f"holds no tokenizer ({', '.join(TOKENIZER_MARKERS)})",
                         "bench a deployment whose model directory has its tokenizer files")
    digest = hashlib.sha1(usedforsecurity=False)
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    repo = hub_cache / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / digest.hexdigest()
    if not snapshot.is_dir():
        partial = snapshot.with_name(snapshot.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, partial / path.name)
        partial.rename(snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(digest.hexdigest())
    return TOKENIZER_REPO


def command(executable: Path, url: str, model: str, settings: BenchSettings, concurrency: int,
            artifact_dir: Path, api_key: str | None = None) -> list[str]:
    """``aiperf profile`` at one concurrency: streaming, synthetic prompts of fixed length, fixed seed. An API key
    goes on its command line (aiperf 0.13 reads it nowhere else) and aiperf redacts it in what it writes."""
    argv = [
        str(executable), "profile", "--url", url, "--model", model, "--endpoint-type", settings.endpoint,
        "--streaming", "--tokenizer", TOKENIZER_REPO, "--concurrency", str(concurrency),
        "--synthetic-input-tokens-mean", str(settings.input_tokens), "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(settings.output_tokens), "--output-tokens-stddev", "0",
        "--random-seed", str(settings.seed), "--artifact-dir", str(artifact_dir),
        "--ui", "none", "--no-gpu-telemetry", "--no-server-metrics",
    ]
    if settings.requests is not None:
        argv += ["--request-count", str(settings.requests)]
    else:
        argv += ["--benchmark-duration", f"{settings.duration_s:g}"]
    if settings.warmup_requests:
        argv += ["--warmup-request-count", str(settings.warmup_requests)]
    if settings.server_token_count:
        argv.append("--use-server-token-count")
    if settings.ignore_eos:
        argv += ["--extra-inputs", "ignore_eos:true"]
    if api_key:
        argv += ["--api-key", api_key]
    if settings.sla:
        argv += ["--goodput", " ".join(f"{bound.aiperf_tag}:{bound.limit_ms:g}" for bound in settings.sla)]
    return argv


def _clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in DROPPED_ENV}


def environment(hub_cache: Path, temp_dir: Path) -> dict[str, str]:
    """The launcher's environment without its Python paths; Hugging Face offline, tokenizer from ``hub_cache``."""
    return {**_clean_environment(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_CACHE": str(hub_cache), "HF_HUB_DISABLE_TELEMETRY": "1", "TMPDIR": str(temp_dir)}


def log_message(line: str) -> tuple[str, str] | None:
    """(level, message) of one of aiperf's log lines (``23:32:37.211 INFO  Dataset configured (file.py:12)``)."""
    match = LOG_LINE.fullmatch(line.rstrip())
    return (match["level"], match["message"]) if match else None


def run_aiperf(argv: list[str], hub_cache: Path, log: Path, timeout_s: float,
               on_message: Callable[[str], None]) -> None:
    """Run one ``aiperf profile`` to its end, its output into ``log``, each log message to ``on_message``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    timed_out = threading.Event()
    with tempfile.TemporaryDirectory(prefix="llm-launch-aiperf-") as temp_dir, log.open("w") as out:
        process = subprocess.Popen(argv, env=environment(hub_cache, Path(temp_dir)), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                   start_new_session=True)

        def expire() -> None:
            timed_out.set()
            _stop(process)

        timer = threading.Timer(timeout_s, expire)
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                out.write(line)
                parsed = log_message(line)
                if parsed is None:
                    continue
                level, message = parsed
                if level in ("ERROR", "CRITICAL") and message not in errors:
                    errors.append(message)
                on_message(message)
            status = process.wait()
        finally:
            timer.cancel()
            _stop(process)
    if timed_out.is_set():
        raise user_error("bench.timeout_s", f"aiperf ran past {timeout_s:g} s; its output: {log}",
                         "raise bench.timeout_s, or lower bench.requests / bench.duration_s")
    if status != 0:
        shown = "; ".join(message[:300] for message in errors[:ERROR_MESSAGES]) or "no error logged"
        raise user_error("aiperf", f"exited with status {status}: {shown}",
                         f"fix what {log} reports (is the deployment up and serving that model?)")


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM aiperf's process group if it still runs (Ctrl-C, an error), then SIGKILL what is left."""
    if process.poll() is None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
