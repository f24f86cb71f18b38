"""The iteration scheduler, in three: planning (plan.py: which stages of which iterations run,
are skipped as finished, refused or redone, each iteration planned once from its records), the
refusals and their remedies (remedies.py) and running the plans (run.py)."""
