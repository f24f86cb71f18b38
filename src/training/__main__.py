"""One training worker, started by `accelerate launch` (see src/training/__init__.py):

python -m src.training <stage_dir>/config.yaml
"""

import sys

from omegaconf import OmegaConf

from src.config import Stage, validate
from src.preemption import EXIT_PREEMPTED, Preempted
from src.training import train

if __name__ == "__main__":
    cfg = validate(OmegaConf.load(sys.argv[1]))
    try:
        train(cfg, cfg.stage_dir(Stage.train))
    except Preempted as stopped:
        print(f"[train] {stopped}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
