"""src/stages: each stage through its own code; report/: what reports on them."""
