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

    def environment(self) -> dict[str, str]:
        """Variables the server (and its Python-backend stub) need: the venv first on PATH, libs."""
        paths = [str(p) for p in (self.libs, sysconfig.get_config_var("LIBDIR")) if p]
        return {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
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
