"""AlpacaEval's files: a reference's answers read from its outputs format, and a model's answers
written in it (`alpaca_eval --model_outputs model_outputs.json` judges them).
"""

from __future__ import annotations

import json
from pathlib import Path

from src.core.artifacts import atomic_write_text
from src.evaluation.answers import EvalError
from src.generation.prompts import Prompt


def reference_from_file(
    outputs: str, instructions: list[Prompt], source: str
) -> tuple[str, dict[str, dict]]:
    """(label, prompt_id -> answer row) from `outputs` (eval.reference_outputs), which must
    answer every instruction read from `source` (data.eval_prompts)."""
    path = Path(outputs)
    rows = read_alpaca_eval(path)
    by_text = {r["instruction"]: r for r in rows}
    missing = [p.prompt for p in instructions if p.prompt not in by_text]
    if missing:
        raise EvalError(
            f"{path}: no reference output for {len(missing)} instruction(s) of "
            f"{source}, e.g. {missing[0][:80]!r}"
        )
    label = str(rows[0].get("generator") or path.stem)
    return label, {p.prompt_id: by_text[p.prompt] for p in instructions}


def read_alpaca_eval(path: Path) -> list[dict]:
    """An AlpacaEval outputs file: a JSON array of {instruction, output, ...} objects."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"eval.reference_outputs: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvalError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(rows, list) or not rows:
        raise EvalError(f"{path}: expected a non-empty JSON array of AlpacaEval outputs")
    for i, row in enumerate(rows):
        if not (
            isinstance(row, dict)
            and isinstance(row.get("instruction"), str)
            and isinstance(row.get("output"), str)
        ):
            raise EvalError(
                f"{path}[{i}]: expected an object with string 'instruction' and 'output'"
            )
    return rows


def write_alpaca_eval(
    path: Path, instructions: list[Prompt], answered: dict[str, dict], generator: str, dataset: str
) -> None:
    """AlpacaEval's model_outputs format: [{instruction, output, generator, dataset}], in the
    instructions' order (`alpaca_eval --model_outputs model_outputs.json` judges it)."""
    rows = [
        {
            "instruction": p.prompt,
            "output": answered[p.prompt_id]["output"],
            "generator": generator,
            "dataset": p.dataset or dataset,
        }
        for p in instructions
        if p.prompt_id in answered
    ]
    atomic_write_text(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
