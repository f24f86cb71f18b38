"""What a run reads that no stage of it makes (models, judges, prompt splits, eval files): listed
from the composed config (`listing`), fetched into the Hub cache (`fetch`), checked offline
before any work (`check`, `cache`); `preflight`: every check `python -m src.main` makes before a
stage, these among them. Command line: `python -m src.assets` (its `__main__`)."""
