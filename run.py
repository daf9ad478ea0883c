"""Hydra entry point.

    python run.py                                   # default: ntk_convergence on digits
    python run.py experiment=kernel_vs_network data=fashion_mnist
    python run.py -m experiment.seeds=[0],[1],[2]   # a sweep; aggregated at the end
    python -m experiments.aggregate multirun/DATE/TIME

Every run writes results.csv / results.json (config, seed, git commit, versions, device, wall
time), figures (PNG and PDF), summary.csv and a log into its Hydra output folder.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.config import ConfigError, register
from experiments.data import DataMissingError

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from experiments.runner import execute

    try:
        hc = HydraConfig.get()
        execute(cfg, hc.runtime.output_dir, job_num=OmegaConf.select(hc, "job.num", default=0) or 0)
    except (ConfigError, DataMissingError, FileNotFoundError, ValueError) as err:
        if os.environ.get("CNTK_TRACEBACK"):
            raise
        print(f"error: {err} (set CNTK_TRACEBACK=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
