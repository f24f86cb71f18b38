"""Hand on what an iteration made: its model (checkpoint + model card) and its data (ranked
responses and pairs as parquet + dataset card), as folders, optionally pushed to the Hub.

    python -m src.export iter=3 model=tiny-mistral                  # -> <run.dir>/export/iter3/
    python -m src.export iter=1 --what data --out /tmp/it1
    python -m src.export iter=3 experiment=gemma-2-9b-it-sppo --push ORG/NAME [--private]

`--push ORG/NAME` uploads the model to the model repository ORG/NAME and the data to the dataset
repository ORG/NAME-data, each in one commit (huggingface_hub's `upload_folder`). The Hub is
checked first (reachable, a token that may write): with it offline or no token, one line and
exit 3, before anything is assembled or uploaded. Nothing is pushed without --push.

Export replaces a `model/` or `data/` in the way only when it is its own export of the same run
and iteration (`--force`: whatever is there); anything else ends with one line naming it, exit 1,
before anything is made.

One export at a time per `--out`: an export holds a lock on it (`.locks/<name>.lock` beside it,
src/core/locks.py) from before it looks at what is there until its push ends; a second export to
the same folder stops at once with one line naming the first (pid, host, command), exit 3.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from src.config import ConfigError, compose
from src.config.cli import MAIN, ArgumentParser, exit_with, failure_line, failures
from src.core.errors import (
    EnvironmentFailure,
    StageError,
    command_line,
    override_key,
    without_keys,
)
from src.core.locks import writing
from src.export.folders import (
    FOLDERS,
    MARKER,
    InTheWay,
    assembled,
    counts_of,
    exported,
    require_replaceable,
)

# per folder: the repository type the Hub files it under
HUB_TYPE = {"model": "model", "data": "dataset"}


def require_hub_writable(repo: str) -> None:
    """The Hub reachable and a token present, before any upload: a push is all or nothing."""
    from huggingface_hub import constants, get_token

    if repo.count("/") != 1:
        raise StageError(f"--push {repo}: name a repository as ORG/NAME")
    if constants.is_offline_mode():
        raise EnvironmentFailure(
            f"--push {repo}: the Hub is offline (HF_HUB_OFFLINE); the folders were not made "
            "or pushed; unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE where the Hub is reachable"
        )
    if get_token() is None:
        raise EnvironmentFailure(
            f"--push {repo}: no Hugging Face token on this machine; nothing was pushed; "
            "run `hf auth login` (or set HF_TOKEN) with a token that may write"
        )


@contextmanager
def parent_writable(out: Path) -> Iterator[None]:
    """Making --out and its lock, beside it (`.locks/`): a refusal there is of the folder above
    --out, which the boundary's line (`point --out at a writable folder`) would not name."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or err.filename is None:
            raise
        folder = Path(err.filename).parent
        raise EnvironmentFailure(
            f"--out {out}: the folder above it, {folder}, cannot be written ({err.strerror}): an "
            "export makes --out and its lock (.locks/) there; point --out into a folder you can "
            "write to"
        ) from err


def push(folder: Path, repo: str, repo_type: str, private: bool) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo,
            repo_type=repo_type,
            folder_path=str(folder),
            ignore_patterns=[MARKER],
            commit_message=f"selfplay-lab export: {folder.parent.name}",
        )
    except (HfHubHTTPError, OSError) as err:  # refused, or the network went away: no commit
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EnvironmentFailure(f"--push {repo} ({repo_type}): the Hub refused: {first}") from None
    return commit.commit_url


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m src.export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, help="folder to write (default <run.dir>/export/iter<t>)"
    )
    parser.add_argument(
        "--what",
        choices=("model", "data", "all"),
        help="what to export (default all: the model and the data; the model alone for an "
        "iteration trained on a pairs file of your own, training.pairs, which made no data)",
    )
    parser.add_argument("--push", metavar="ORG/NAME", help="upload to the Hub (opt-in)")
    parser.add_argument("--private", action="store_true", help="create the repositories private")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace whatever is in the way (by default only this run's own earlier export)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m src.main")
    own_command = command_line("python -m src.export", words)
    with failures(own_command):
        args = parser.parse_intermixed_args(words)
    # what fixes an export is making the stages it reads: the pipeline's command, same overrides
    command = command_line(MAIN, args.overrides)
    # a folder it cannot write is --out's to move, by default under paths.root: moving the
    # root would leave the run behind
    with failures(command, where="--out"):
        try:
            export(args, own_command)
        except InTheWay as err:  # fixed by this command itself, with --force
            exit_with(*failure_line(err, own_command), err)


def export(args: argparse.Namespace, command: str) -> None:
    """Make the folders the arguments ask for, and push them with --push; `command`: this
    export's, as its lock names it to a second export of the same folder."""
    iteration = [o.partition("=")[2] for o in args.overrides if override_key(o) == "iter"] or ["1"]
    if not iteration[-1].isdigit():
        raise ConfigError(f"iter={iteration[-1]}: must be an iteration number")
    cfg = compose(without_keys(args.overrides, "iter", "stage"), int(iteration[-1]))
    if args.push:
        require_hub_writable(args.push)
    out = args.out or cfg.layout.export_dir(cfg.iter)
    wanted = exported(args.what, cfg)
    if args.what is None and "data" not in wanted:
        said = f"training.pairs={cfg.training.pairs}, a file of your own"
        print(f"[export] data: none, iteration {cfg.iter} trains on {said}", file=sys.stderr)
    # the stages each folder is made from judged before --out or its lock is made: a refusal
    # leaves nothing behind
    makers = {name: FOLDERS[name](cfg) for name in wanted}
    with ExitStack() as held:
        # without --out the folder is under paths.root: the boundary's line points --out elsewhere
        with parent_writable(out) if args.out else nullcontext():
            out.mkdir(parents=True, exist_ok=True)  # a file in its way named as the user wrote it
            held.enter_context(writing(out.resolve(), command))  # until the push read the folders
        for name in wanted:  # every one refused before any is made: no export left half done
            require_replaceable(out / name, cfg, args.force)
        made = [(HUB_TYPE[name], assembled(out / name, make, cfg, args.force))
                for name, make in makers.items()]  # fmt: skip
        for kind, folder in made:
            rows = counts_of(folder)
            print(f"[export] {kind}: {folder}" + (f" {rows}" if rows else ""), file=sys.stderr)
        for kind, folder in made if args.push else []:
            repo = args.push if kind == "model" else f"{args.push}-data"
            url = push(folder, repo, kind, args.private)
            print(f"[export] pushed {kind}: {url}", file=sys.stderr)


if __name__ == "__main__":
    main()
