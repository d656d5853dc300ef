"""Benchmarks: `python -m orthrus_min.bench {ar,attn} …` — ratios measured side by side in one run."""
