"""The ``tritonserver`` that runs locally: by default the one shipped in the nvidia-pytriton wheel."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import user_error


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    root: Path | None  # .../pytriton/tritonserver when it comes from the wheel
    libs: Path | None  # .../nvidia_pytriton.libs (shared libraries the wheel vendors)

    def environment(self, python: Path | None = None) -> dict[str, str]:
        """Variables the server and its Python-backend stub need: the serving Python first on PATH
        (the stub takes its ``sys.path`` from it), the wheel's libraries and libpython's directory."""
        paths = [str(p) for p in (self.libs, sysconfig.get_config_var("LIBDIR")) if p]
        return {
            "PATH": os.pathsep.join([str((python or Path(sys.executable)).parent), os.environ.get("PATH", "")]),
            "LD_LIBRARY_PATH": os.pathsep.join([*paths, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":"),
        }


def find_triton(override: str | None = None) -> TritonInstall:
    """Locate ``tritonserver``: ``target.tritonserver``, else the wheel's, else the one on PATH."""
    if override:
        return TritonInstall(Path(override), None, None)
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        libs = package.parent / "nvidia_pytriton.libs"
        if (root / "bin" / "tritonserver").is_file():
            return TritonInstall(root / "bin" / "tritonserver", root, libs if libs.is_dir() else None)
    return TritonInstall(Path(shutil.which("tritonserver") or "tritonserver"), None, None)


def require_triton(install: TritonInstall) -> TritonInstall:
    """Fail clearly when there is no server binary to start."""
    if not (install.binary.is_file() or shutil.which(str(install.binary))):
        raise user_error("target.tritonserver", "no tritonserver found (nvidia-pytriton is not installed)",
                         "run scripts/setup, or set target.tritonserver=/path/to/tritonserver")
    return install


def backend_files(root: Path) -> dict[str, Path]:
    """``python/<file>`` -> source in the wheel's ``root``: the Python backend, its utils, this Python's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise user_error("target.tritonserver", f"the nvidia-pytriton wheel has no Python-backend stub for "
                         f"Python {version}", "serve from a Python the wheel supports (3.8-3.13)")
    library = root / "backends" / "python"
    sources = (library / "libtriton_python.so", library / "triton_python_backend_utils.py", stub)
    return {f"python/{source.name}": source for source in sources}


def require_numpy_below_2() -> None:
    """The Triton 2.51 stub garbles every input tensor under numpy 2 (DESIGN.md section 6)."""
    from importlib import metadata

    try:
        version = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return
    if int(version.split(".")[0]) >= 2:
        raise user_error("numpy", f"the serving Python ({sys.executable}) has numpy {version}; Triton 2.51's "
                         "Python-backend stub needs numpy < 2",
                         "pip install 'numpy<2' into this environment, or let the launcher build a serving "
                         "environment with target.prepare_serving_env=true (and target.wheel_dir offline)")
