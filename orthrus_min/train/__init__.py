"""Training: a tokenizer, a tiny Qwen3 base, and the Orthrus diffusion view of any Qwen3 (paper §4, "Training").

    python -m orthrus_min.train tokenizer --out runs/tok                         # byte-level BPE on the corpus
    python -m orthrus_min.train pretrain  --tokenizer runs/tok --out runs/base   # a tiny Qwen3 base, from scratch
    python -m orthrus_min.train regenerate --model Qwen/Qwen3-1.7B --data prompts.jsonl --out responses.jsonl --no-thinking
    python -m orthrus_min.train distill   --model runs/base --out runs/orthrus   # the diffusion view (KL to the AR view)
    torchrun --nproc-per-node 8 -m orthrus_min.train distill --model Qwen/Qwen3-1.7B --data responses.jsonl …
    python -m orthrus_min.train export    --model runs/orthrus --out ship         # a bfloat16 copy for shipping
    python -m orthrus_min.train prompts   --out prompts.jsonl                     # held-out prompts for benchmarks

The default corpus (`--data stdlib`) is the Python standard library of the interpreter that
runs the command: present on every machine, so the small recipe runs offline. `--data` also
takes folders, text files and JSONL files of {"text"} or {"messages"} rows (chats are rendered
with the model's own chat template, with loss only on the assistant's tokens), mixed by `--mix`.
Every training stage packs documents into `--seq-len` rows, checkpoints atomically to
`--out/checkpoints/`, continues with `--resume`, stops cleanly after `--minutes`, prints its plan
with `--dry-run`, and runs data-parallel under torchrun.

Modules, one job each:
  cli.py         flags, value checks, dispatch, `main`
  stages.py      each stage wired: out-folder and resume checks, dry run, data, model, loop
  sources.py     what --data names: files, folders, stdlib, JSONL rows; the train / held-out split
  chat.py        chats rendered with the chat template; the assistant-only loss mask
  corpus.py      tokenized documents, cached under a key of the data and the tokenizer
  data.py        a stage's data: sources tokenized once, the mix, self-distillation sequences
  packing.py     documents packed into rows, epochs, the data position
  objective.py   next-token loss, the dual-pass forward and the distillation loss
  loop.py        the shared training loop (DDP, accumulation, autocast, evaluation, resume)
  pretrain.py    the pretraining job and model presets
  distill.py     the distillation job: anchor blocks and block sizes drawn, mask-token choice, freezing the base
  evaluate.py    held-out loss and acceptance length
  regenerate.py  the base model's own responses (the regenerate stage, --self-distill)
  checkpoint.py  atomic checkpoints, random states, the --out rules
  dist.py        processes: rank, world, device, collectives
  progress.py    progress lines and log.jsonl
  plan.py        --dry-run: parameter counts, memory estimate, launch command
  bpe.py         the tokenizer stage
  heldout.py     the prompts stage: prompts cut from held-out files
"""

from .bpe import SPECIAL_TOKENS, train_tokenizer
from .checkpoint import TOKENIZER_FILES, copy_tokenizer
from .cli import build_parser, main
from .corpus import DocArrays
from .distill import choose_mask_token, freeze_base
from .evaluate import acceptance_length, eval_prompts, heldout_loss, heldout_prompts
from .loop import Schedule
from .objective import TrainingCache, block_starts, distill_loss, dual_forward
from .packing import RowStream, pack, plan_epoch
from .pretrain import MODEL_PRESETS, init_weights
from .heldout import make_prompts
from .regenerate import greedy_continuations, self_distillation_data
from .sources import corpus_files, is_heldout, random_windows, read_text, split_files, tokenize_files

__all__ = ["main", "build_parser", "MODEL_PRESETS", "dual_forward", "distill_loss", "block_starts", "TrainingCache",
           "Schedule", "acceptance_length", "heldout_loss", "heldout_prompts", "eval_prompts",
           "corpus_files", "split_files", "is_heldout", "read_text", "tokenize_files", "random_windows", "train_tokenizer",
           "SPECIAL_TOKENS", "init_weights", "freeze_base", "choose_mask_token", "greedy_continuations",
           "self_distillation_data", "make_prompts", "copy_tokenizer", "TOKENIZER_FILES", "DocArrays", "RowStream", "pack",
           "plan_epoch"]
