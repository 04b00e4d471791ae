"""Launcher overhead: cold ``llm-launch action=plan`` vs a bare ``@hydra.main`` no-op, side by side.

Each run is a fresh process (cold imports); runs alternate so both see the same machine state.
Usage: python bench/plan_overhead.py [runs]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_APP = '''
import hydra
from omegaconf import DictConfig

@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> None:
    pass

main()
'''

# The same no-op, composing the launcher's own config tree: Hydra's cost for our groups and schemas.
SAME_CONFIG_APP = '''
import hydra
from omegaconf import DictConfig
from launcher.registry import CONF_DIR, register_configs

register_configs()  # the structured configs our groups extend

@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    pass

main()
'''


def timed(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(runs: int = 10) -> None:
    with tempfile.TemporaryDirectory() as cwd:
        bare, same = Path(cwd) / "bare_app.py", Path(cwd) / "same_config_app.py"
        bare.write_text(BARE_APP)
        same.write_text(SAME_CONFIG_APP)
        overrides = ["model=llama3-8b", "hardware=h100x1", "backend=trtllm"]
        commands = {
            "bare @hydra.main": [sys.executable, str(bare), "hydra.run.dir=.", "hydra.output_subdir=null"],
            "no-op, same config": [sys.executable, str(same), *overrides],
            "llm-launch action=plan": [sys.executable, "-m", "launcher.cli", *overrides, "action=plan"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, cwd))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:24s} median {median * 1000:7.0f} ms over {runs} cold runs")
    plan = medians["llm-launch action=plan"]
    print(f"ratio llm-launch plan / bare @hydra.main:       {plan / medians['bare @hydra.main']:.2f}x")
    print(f"ratio llm-launch plan / no-op with same config: {plan / medians['no-op, same config']:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
