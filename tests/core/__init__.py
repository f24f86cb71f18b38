"""src/core: records, chunks, locks, artifacts, devices, threads, errors."""
