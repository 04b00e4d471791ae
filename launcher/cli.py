"""``llm-launch``: compose a deployment spec with Hydra and run it up to ``action``."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from launcher.errors import USER_ERROR_EXIT, Interrupted, LauncherError
from launcher.registry import CONF_DIR, register_configs

register_configs()


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float:
    """Entry point; in a ``-m`` sweep an invalid combination is recorded, not raised."""
    from launcher.pipeline import deploy
    from launcher.report import print_outcome, print_problems
    from launcher.server import sigterm_as_interrupt
    from launcher.sweep import check_job, job_result, repeated_trial

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and not any(o.startswith("output_dir=") for o in hydra_cfg.overrides.task):
        # one directory per job, so combinations that share a name never overwrite each other
        cfg.output_dir = f"{hydra_cfg.sweep.dir}/{hydra_cfg.job.num}-{cfg.name}"
    if (repeated := repeated_trial(cfg)) is not None:
        return repeated
    try:
        with sigterm_as_interrupt():
            check_job(cfg)
            outcome = deploy(cfg, tuple(hydra_cfg.overrides.task))
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the server stopped, caches and renders cleaned up
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleaned up already: a second Ctrl-C must not end in -2
        stopped = err if isinstance(err, Interrupted) else Interrupted("SIGINT")
        print(f"stopped by {stopped.signal_name} during action={cfg.action.value}"
              + (f" (while {stopped.stage})" if stopped.stage else "") + "; nothing was left half-written",
              file=sys.stderr)
        sys.exit(stopped.exit_status)
    except LauncherError as err:
        if multirun:
            return job_result(cfg, {"status": "invalid", "problem": str(err.problems[0]), "output_dir": ""})
        print_problems(err)
        if os.environ.get("LAUNCHER_FULL_ERROR") == "1":
            raise
        sys.exit(USER_ERROR_EXIT)
    if not multirun:
        print_outcome(outcome)
    output_dir = outcome.output_dir or outcome.export_dir or ""
    return job_result(cfg, {"status": "ok", "problem": "", "output_dir": output_dir})


if __name__ == "__main__":
    main()
