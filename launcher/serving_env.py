"""The Python that runs ``model.py`` inside Triton's Python-backend stub.

The stub shipped with Triton 2.51 (nvidia-pytriton) garbles every input under numpy 2 (DESIGN
section 6). When the launcher's own Python has numpy < 2 it serves as is. Otherwise (GPU hosts
often ship numpy 2 with CUDA torch) the launcher builds, once, an overlay environment in the export
cache: a venv whose site-packages link to every package of this Python except numpy and the
packages compiled against numpy 2, plus numpy < 2 installed from PyPI or from ``target.wheel_dir``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from launcher import cache
from launcher.errors import user_error
from launcher.spec import HostTritonSpec

# Top-level names compiled against numpy 2 on such hosts; none is needed to serve a causal LM.
NUMPY2_BUILT = {
    "numpy", "scipy", "sklearn", "scikit_learn", "pandas", "numba", "cupy", "cupy_cuda13x", "cupy_backends",
    "jax", "jaxlib", "h5py", "matplotlib", "cv2", "opencv_python", "opencv_python_headless", "pyarrow",
    "statsmodels", "skimage", "scikit_image", "xarray", "tensorstore", "numexpr", "torchvision", "torchaudio",
}


def numpy_major(python: str = sys.executable) -> int | None:
    """numpy's major version in this Python (``None`` when numpy is absent)."""
    if python == sys.executable:
        try:
            return int(metadata.version("numpy").split(".")[0])
        except metadata.PackageNotFoundError:
            return None
    out = subprocess.run([python, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True)
    return int(out.stdout.split(".")[0]) if out.returncode == 0 else None


def _top_level(entry: str) -> str:
    """Normalised top-level name of a site-packages entry (``numpy-1.26.4.dist-info`` -> ``numpy``)."""
    stem = re.split(r"-\d", entry.removesuffix(".dist-info").removesuffix(".egg-info"), maxsplit=1)[0]
    return re.sub(r"[-.]+", "_", stem.removesuffix(".libs").removesuffix(".py")).lower()


def _build_overlay(env: Path, wheel_dir: str | None) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = env / "lib" / version / "site-packages"
    base = Path(sysconfig.get_paths()["purelib"])
    for entry in sorted(base.iterdir()):
        if _top_level(entry.name) not in NUMPY2_BUILT and entry.name != "__pycache__":
            (site / entry.name).symlink_to(entry)
    source = ["--no-index", "--find-links", wheel_dir] if wheel_dir else []
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *source,
           "numpy<2"]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise user_error("target.wheel_dir", f"could not install numpy<2 for the Triton stub: "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}",
                         "set target.wheel_dir to a folder holding a numpy<2 wheel for this Python, "
                         "or pip install 'numpy<2' into this environment")


def serving_python(cache_dir: Path, wheel_dir: str | None, build: bool = True) -> Path:
    """This Python when its numpy < 2; else the overlay environment's Python, built once (atomically)
    unless ``build`` is false (rendering only names it; serving builds it)."""
    if (numpy_major() or 0) < 2:
        return Path(sys.executable)
    base = sysconfig.get_paths()["purelib"]
    key = hashlib.sha256(f"{sys.executable}|{base}|{metadata.version('numpy')}".encode()).hexdigest()[:12]
    env = cache_dir / f"serving-env-py{sys.version_info.major}{sys.version_info.minor}-{key}"
    python = env / "bin" / "python"
    if not build:
        return python
    cache.fill(env, lambda tmp: _build_overlay(tmp, wheel_dir))
    if (numpy_major(str(python)) or 0) >= 2:
        raise user_error("numpy", f"the serving environment {env} still has numpy >= 2",
                         f"remove {env} and run again")
    return python


def serving_environment(target: HostTritonSpec, cache_dir: Path, build: bool = True) -> dict[str, str]:
    """The server's environment, with the Python that runs model.py (numpy < 2) first on PATH;
    ``build=False`` (render) only names an overlay environment that serving will build."""
    from launcher.triton import find_triton, require_numpy_below_2

    if build and not target.prepare_serving_env:
        require_numpy_below_2()
    python = serving_python(cache_dir, target.wheel_dir, build)
    return find_triton(target.tritonserver).environment(python)
