"""AlpacaEval's files and AlpacaEval 2 itself: a reference's answers read from its outputs
format, a model's answers written in it, and (eval.alpaca_eval=true) alpaca_eval's own evaluator
run on them, its leaderboard row read back.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import hf_hub_download

from src.core.artifacts import atomic_write_text
from src.core.errors import EnvironmentFailure
from src.evaluation.errors import EvalError
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


# --- AlpacaEval 2 itself: its judge, its reference, its leaderboard row -------------------------

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2's default judge (OpenAI's API)
# AlpacaEval 2's 805 instructions with the GPT-4 Turbo answers it compares against. Read as a
# file: the dataset's loading script no longer runs under datasets >= 4.
REFERENCE_REPO, REFERENCE_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"
# what the leaderboard's length control reads from the Hub (alpaca_eval's glm_winrate)
GLM_FILES = ("df_gamed.csv",)
OPENAI_URL = "https://api.openai.com/v1/models"
RESULTS = "alpaca_eval"  # the folder of alpaca_eval's own files in the eval stage's folder
# alpaca_eval's leaderboard columns -> eval.json's keys (rates as fractions, as the stage's own)
LEADERBOARD_COLUMNS = {
    "length_controlled_winrate": "lc_win_rate",
    "lc_standard_error": "lc_standard_error",
    "win_rate": "win_rate",
    "standard_error": "standard_error",
}
LEADERBOARD_COUNTS = ("avg_length", "n_total", "n_wins", "n_wins_base", "n_draws")


def alpaca_eval_missing(environ=os.environ, reach: bool = True) -> str | None:
    """What stops alpaca_eval's judge from running here, or None: the OpenAI key, and with
    `reach` an answer from OpenAI's API. (Its Hub files are the assets check's, src/assets.)"""
    if not environ.get("OPENAI_API_KEY"):
        return "OPENAI_API_KEY is not set"
    if not reach:
        return None
    try:
        urllib.request.urlopen(urllib.request.Request(OPENAI_URL, method="HEAD"), timeout=10)
    except urllib.error.HTTPError:
        pass  # it answered (401 without a key's scope, say): the network is there
    except (urllib.error.URLError, OSError) as err:
        return f"{OPENAI_URL} does not answer ({getattr(err, 'reason', err)})"
    return None


def require_alpaca_eval_judge(reach: bool = True) -> None:
    """Refuse, before any answer is made, an eval.alpaca_eval=true that could not be judged:
    exit 3, with the command that makes the answers without it."""
    missing = alpaca_eval_missing(reach=reach)
    if missing:
        raise EnvironmentFailure(
            f"eval.alpaca_eval=true runs AlpacaEval 2's judge ({ANNOTATOR}, OpenAI's API), "
            f"but {missing}: run this command again where the key and the network are "
            "(answers made before are reused), or make the answers here without it",
            fix="eval.alpaca_eval=false",
        )


def judge_with_alpaca_eval(model_outputs: Path, out_dir: Path, name: str) -> dict:
    """AlpacaEval 2 on `model_outputs` (AlpacaEval's format): its default judge against its GPT-4
    Turbo reference; alpaca_eval writes leaderboard.csv and annotations.json under
    `out_dir`/ANNOTATOR and caches the judge's answers there (a re-run pays only for the rest).
    Returns the leaderboard row (`leaderboard_row`)."""
    from alpaca_eval.main import evaluate

    reference = hf_hub_download(REFERENCE_REPO, REFERENCE_FILE, repo_type="dataset")
    known = {r["instruction"] for r in read_alpaca_eval(Path(reference))}
    ours = read_alpaca_eval(model_outputs)
    unknown = [r["instruction"] for r in ours if r["instruction"] not in known]
    if unknown:
        raise EvalError(
            f"eval.alpaca_eval=true judges AlpacaEval 2's {len(known)} instructions, but "
            f"{len(unknown)} of {model_outputs}'s are not among them, e.g. {unknown[0][:80]!r}; "
            f"set data.eval_prompts to AlpacaEval's {REFERENCE_FILE}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluate(
        model_outputs=str(model_outputs),
        reference_outputs=reference,
        annotators_config=ANNOTATOR,
        name=name,
        output_path=str(out_dir),
        precomputed_leaderboard=None,
        is_return_instead_of_print=True,
        caching_path=str(out_dir / "annotator_cache.json"),
    )
    return leaderboard_row(out_dir / ANNOTATOR / "leaderboard.csv", name)


def leaderboard_row(path: Path, name: str) -> dict:
    """The row `name` of alpaca_eval's leaderboard.csv: LC and raw win rates with their
    standard errors as fractions, average length (characters) and counts, the judge."""
    import pandas as pd

    try:
        table = pd.read_csv(path, index_col=0)
    except (FileNotFoundError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise EvalError(f"{path}: not alpaca_eval's leaderboard file ({err})") from None
    if name not in table.index:
        raise EvalError(f"{path}: no row for {name!r} (it has {', '.join(map(str, table.index))})")
    row = table.loc[name]
    missing = [c for c in (*LEADERBOARD_COLUMNS, "avg_length", "n_total") if c not in row.index]
    if missing:
        raise EvalError(f"{path}: the row {name!r} has no {', '.join(missing)}")
    out = {
        key: (None if pd.isna(row[column]) else float(row[column]) / 100)
        for column, key in LEADERBOARD_COLUMNS.items()
    }
    out |= {key: int(row[key]) for key in LEADERBOARD_COUNTS if key in row.index}
    return out | {"annotator": path.parent.name, "leaderboard": str(path)}
