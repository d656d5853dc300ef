"""Benchmarks: every performance claim, measured side by side in one run, on the same weights and prompts.

    python -m orthrus_min.bench all                                  # the shipped model: everything below, one report
    python -m orthrus_min.bench orthrus --model DIR --prompts FILE   # our AR vs Orthrus (greedy, T=0.7) + sweeps
    python -m orthrus_min.bench ar --model DIR                       # our AR vs Transformers generate, random prompt
    python -m orthrus_min.bench forward --model DIR                  # one forward of 1 vs K tokens; decode vs roofline
    python -m orthrus_min.bench random-model --preset qwen3-1.7b --out /tmp/qwen3-1.7b   # a random Qwen3 to time
    python -m orthrus_min.bench attn                                 # the Triton kernel (needs CUDA)
    python -m orthrus_min.bench gpu                                  # everything a GPU must show, one report (gpu.py)
    python -m orthrus_min.bench all --smoke                          # seconds: 1 prompt, few tokens, tiny sweeps
    python -m orthrus_min.bench report --json docs/results/bench_all.json   # that JSON -> README and model card tables

`orthrus` and `all` (decode.py) decode every prompt with each method — Transformers `generate`
(greedy; `all` only, and only where transformers is installed), our AR and Orthrus, each greedy
and at temperature 0.7 (seeded) — interleaved, after warm-up runs, and report the median of
`--repeats` per prompt and overall: tokens/s, time to first token, tokens per forward,
acceptance length (mean and histogram), peak memory, and whether the greedy outputs are
identical (Orthrus vs our AR, our AR vs Transformers). Then two sweeps of Orthrus greedy
against our AR: by block size (4, 8, 16, 32, clipped to the checkpoint's block_size) and by
context length (each prompt prefixed with other prompts' text to reach 128, 512, 1024, …
tokens). `all` adds the per-forward latency table of `forward` (forward.py).

Every command that runs a model prints a Markdown report and writes it to OUT/bench_<command>.md,
the result as JSON to `--json` (default OUT/bench_<command>.json) and, for `orthrus` and `all`
when matplotlib is installed, a PNG plot of acceptance length and speedup by block size and by
context length (OUT/bench_<command>.png); OUT is `--out` (default bench-results). Output paths
are checked before any model is loaded; every user mistake prints one line `error: …` and
exits with status 2.

Peak memory is CUDA's max_memory_allocated on a GPU; on CPU it is the process's peak RSS
(resource.getrusage), which only ever grows over the process: a row shows the peak so far.
Absolute times mean something only on a GPU; ratios from one run are the result
(docs/ARCHITECTURE.md, "Performance model"). On a CPU shared with other work, `--threads 1`
avoids OpenMP's costly waits for busy cores.

Modules: cli.py (flags, checks, dispatch), common.py (timer, bandwidth probe, machine, files),
decoders.py (the methods: the only caller of the decoders), measure.py (interleaved timing and
statistics), reference.py (Transformers), decode.py + decode_report.py (`orthrus`, `all`; prompt
files: orthrus_min/prompts.py), forward.py, ar.py, attn.py, random_model.py, gpu.py (`gpu`: every section above
that a GPU must show, plus batch invariance, in one report), report.py (`report`: a JSON of `all`
rendered into the results regions of README.md and the model card; `--check` compares).
"""
