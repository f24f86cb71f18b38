"""The tiny models and the tiny benchmarks' data a command needs, made before its first stage
(src/assets/preflight.py): cached, seconds on first use, a few minutes for tiny-chat-judge."""

from __future__ import annotations

from pathlib import Path

from src.config import BENCHMARK_DATA, Benchmark, Config, Stage
from src.core.errors import blamed


def ensure_tiny_models(cfg: Config) -> None:
    """Build the tiny models this config points at (cached; seconds on first use, a few minutes
    for tiny-chat-judge), and write the tiny benchmarks' data where it reads them."""
    tiny_dir = Path(cfg.paths.tiny_dir)
    models = [cfg.model.path, cfg.ranker.model]
    evaluating = cfg.stage == Stage.eval or cfg.eval.enabled
    if cfg.eval.judge is not None and evaluating:
        models.append(cfg.eval.judge.model)
    judged = [BENCHMARK_DATA[b] for b in cfg.eval.benchmarks if b in BENCHMARK_DATA]
    if judged and evaluating and cfg.eval.llm_judge.serve is not None:
        models.append(cfg.eval.llm_judge.serve)
    wanted = [Path(p) for p in models if Path(p).parent == tiny_dir]
    tiny_data = Path(cfg.paths.tiny_benchmarks)

    def tiny_copy(key: str) -> bool:  # data.<key> is a folder of the tiny benchmarks' data
        return evaluating and Path(getattr(cfg.data, key) or "").parent == tiny_data

    chat_data = any(tiny_copy(key) for key in judged)
    board_data = Benchmark.leaderboard in cfg.eval.benchmarks and tiny_copy("leaderboard")
    if wanted or chat_data or board_data:
        from src.tiny import models as tiny

        # a folder that cannot be written is the fault of its own key, not of paths.root
        with blamed("paths.tiny_dir", tiny_dir):
            for path in wanted:
                if path.name in tiny.TINY_NAMES:
                    tiny.ensure(path.name, tiny_dir)
        with blamed("paths.tiny_benchmarks", tiny_data):
            if chat_data:
                from src.tiny import benchmarks

                benchmarks.ensure(tiny_data)
            if board_data:
                from src.tiny import leaderboard

                leaderboard.ensure_datasets(Path(cfg.data.leaderboard))
