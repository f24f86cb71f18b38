"""python -m src.compare [--root DIR] [--out DIR] [--wandb ENTITY/PROJECT] [--metric NAME]
[--only PATTERN]... [--where KEY=VALUE]... [--hparam-metric NAME] [--by seed]"""

from src.compare.table import main

if __name__ == "__main__":
    main()
