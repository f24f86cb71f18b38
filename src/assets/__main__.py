"""`python -m src.assets {list,fetch,check}`: what a command's run reads, fetched or checked.

    python -m src.assets list  --iterations 3 experiment=mistral-7b-instruct-sppo
    python -m src.assets fetch --iterations 3 experiment=mistral-7b-instruct-sppo   # login node
    python -m src.assets check --iterations 3 experiment=mistral-7b-instruct-sppo   # any node

The overrides are a `python -m src.main` command's (or `src.slurm`'s, `src.sweep`'s); the
iterations are 1..N (`--iterations N`, `--from-iter`), else those `src.main` would run (1..iter
for `stage=all`). `fetch` downloads the hub assets into the Hub cache the run reads
(`paths.hub_cache`: $HF_HUB_CACHE, else $HF_HOME/hub), `--only ID` one of them; `check` reads that
cache with the network unused and exits 3 naming every asset missing or damaged (`--verify` also
hashes every file against the Hub's record of it).
"""

from __future__ import annotations

import contextlib
import sys

from src import config
from src.assets.check import damage, listed_for, require_assets, where
from src.assets.fetch import fetch_all
from src.assets.listing import Listed
from src.config import Config, ConfigError, Stage
from src.config.cli import ArgumentParser, failures
from src.core.errors import command_line, without_keys


def iteration_configs(overrides: list[str], iterations: int | None, from_iter: int) -> list[Config]:
    """The configs of the iterations a command reads from."""
    if iterations is None:
        last = config.compose(overrides)
        first = 1 if last.stage == Stage.all else last.iter
        iterations, from_iter = last.iter, first
    rest = without_keys(overrides, "iter")
    if from_iter > iterations:
        raise ConfigError(f"no iterations: --from-iter {from_iter} > --iterations {iterations}")
    return [config.compose(rest, t) for t in range(from_iter, iterations + 1)]


def print_listing(listed: list[Listed], cfg: Config, verify: bool = False) -> None:
    for entry in listed:
        print(entry.asset.label())
        print(f"    read by: {entry.used_by()}")
        why = damage(entry.asset, cfg, verify) if entry.asset.kind != "made" else None
        print(f"    here:    {where(entry.asset, cfg)}{f' ({why})' if why else ''}")


def main(argv: list[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="python -m src.assets", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("list", "fetch", "check"))
    parser.add_argument("--iterations", type=int, help="iterations 1..N (default: the command's)")
    parser.add_argument("--from-iter", type=int, default=1, help="first iteration")
    parser.add_argument("--only", action="append", help="fetch: this hub id alone (repeatable)")
    parser.add_argument("--verify", action="store_true", help="check: hash every file too")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m src.main")
    with failures(command_line("python -m src.assets", words)):
        args = parser.parse_intermixed_args(words)
        listing = args.action == "list"  # shows what a run reads, a file it requires included
        with config.showing_unset_required() if listing else contextlib.nullcontext() as unset:
            configs = iteration_configs(args.overrides, args.iterations, args.from_iter)
        cfg = configs[0]
        listed = listed_for(configs)
        iters = f"{configs[0].iter}-{configs[-1].iter}" if len(configs) > 1 else configs[0].iter
        print(f"# iteration {iters} of {cfg.run.dir}; Hub cache {cfg.paths.hub_cache}")
        if listing:
            print_listing(listed, cfg)
            for line in unset:
                print(f"missing: {line}")
            return
        if args.action == "fetch":
            if args.only:
                unknown = [i for i in args.only if i not in {e.asset.source for e in listed}]
                if unknown:
                    raise ConfigError(
                        f"--only {unknown[0]}: this command reads no such asset (it reads: "
                        f"{', '.join(e.asset.source for e in listed if e.asset.on_hub)})"
                    )
                listed = [e for e in listed if e.asset.source in args.only]
            fetched = {a.source for a in fetch_all(listed, cfg.paths.hub_cache)}
            # again: a ranker's backbone is now read from its config
            listed = [e for e in listed_for(configs) if not args.only or e.asset.source in fetched]
        chain = ["--iterations", str(args.iterations)] if args.iterations else []
        chain += ["--from-iter", str(args.from_iter)] if args.from_iter != 1 else []
        require_assets(listed, cfg, [*chain, *args.overrides], online=False, verify=args.verify)
        here = [e for e in listed if e.asset.kind != "made"]
        print(f"all {len(here)} assets are here and whole (what the run makes aside)")


if __name__ == "__main__":
    main()
