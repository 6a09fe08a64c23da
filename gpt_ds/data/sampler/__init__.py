"""The sampler: one global, seeded order of sample numbers (order.py) and each rank's share of every step, prefetched
and masked in a background thread (loader.py)."""
