"""The ground floor every stage shares: atomic files, records, chunks, checkpoints, devices,
threads, CPU kernels, preemption, errors. It takes plain values and imports nothing above it (not
src.config, not src.stages): tests/test_layers.py."""
