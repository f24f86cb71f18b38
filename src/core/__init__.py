"""Infrastructure every stage shares: atomic files, records, chunks, the policy, devices, preemption, tracking."""
