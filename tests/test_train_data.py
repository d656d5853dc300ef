"""Training data: chats rendered with the real Qwen3 template and an assistant-only loss mask, packing and its
document boundaries, the mix, the data position, sharding, and the keyed token cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orthrus_min.errors import OrthrusError
from orthrus_min.tokenizer import Tokenizer
from orthrus_min.train.chat import chat_tokens, generation_prompt
from orthrus_min.train.corpus import documents_from_lists, tokenize_source
from orthrus_min.train.data import describe_sources
from orthrus_min.train.packing import Pool, RowStream, mix_counts, pack, pieces_of, plan_epoch, rows_of, split_for_rank
from orthrus_min.train.sources import iter_documents, resolve_sources
from train_helpers import CHAT_DATA, qwen3_style_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_tok")
    qwen3_style_tokenizer(folder)
    return Tokenizer(folder)


def split_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m]), tok.decode([i for i, m in zip(ids, mask) if not m])


# --------------------------------------------------------------------------- chat rendering


def test_single_turn_loss_is_exactly_the_answer(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 times 7?"},
                {"role": "assistant", "content": "12 times 7 is 84."}]
    ids, mask = chat_tokens(tok, messages, enable_thinking=False)
    trained, context = split_text(tok, ids, mask)
    assert trained == "12 times 7 is 84.<|im_end|>\n"
    assert context == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n"
                       "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the context tokens are exactly the generation prompt, encoded alone as at decoding time
    assert ids[: mask.index(1)] == generation_prompt(tok, messages, enable_thinking=False)
    assert set(mask[mask.index(1):]) == {1}
    ids_t, mask_t = chat_tokens(tok, messages, enable_thinking=None)  # the template's default (Qwen3: thinking on)
    assert split_text(tok, ids_t, mask_t)[0] == "<think>\n\n</think>\n\n12 times 7 is 84.<|im_end|>\n"


def test_multi_turn_trains_the_turns_the_template_keeps(tok):
    """Qwen3 rewrites assistant turns before the last user message (no <think> block): those are context."""
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
                {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6."}]
    trained, context = split_text(tok, *chat_tokens(tok, messages, enable_thinking=False))
    assert trained == "6.<|im_end|>\n"
    assert "<|im_start|>assistant\n4.<|im_end|>" in context


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "hi"}], "has no assistant turn"),
    ([{"role": "assistant", "content": "hi"}], "renders none of the assistant turns"),
], ids=["no-assistant", "assistant-first"])
def test_chats_without_a_trainable_answer_are_refused(tok, messages, message):
    with pytest.raises(OrthrusError, match=message):
        chat_tokens(tok, messages, enable_thinking=False, where="x.jsonl:3")


def test_chat_rows_need_a_chat_template(tmp_path, tok):
    folder = tmp_path / "plain"
    qwen3_style_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(OrthrusError, match=r"x.jsonl:1: a chat row needs a chat template"):
        chat_tokens(Tokenizer(folder), [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], False,
                    "x.jsonl:1")


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "a"}', r"bad.jsonl:2: not valid JSON"),
    ('[1, 2]', r"bad.jsonl:2: expected a JSON object"),
    ('{"question": "a"}', r"bad.jsonl:2: expected \{\"text\""),
    ('{"messages": [{"role": "robot", "content": "a"}]}', r"bad.jsonl:2: messages\[0\] has role 'robot'"),
    ('{"messages": []}', r"bad.jsonl:2: \"messages\" must be a non-empty list"),
    ('{"messages": [{"role": "user", "content": 5}]}', r"bad.jsonl:2: messages\[0\].content must be a string"),
    ('{"text": "a", "text": "b"}', r'bad.jsonl:2: the key "text" is given twice'),
    ('{"messages": [{"role": "user", "content": "a\\udcff"}]}',
     r'bad.jsonl:2: "messages"\[0\]\["content"\] is not valid Unicode: a lone surrogate U\+DCFF at character 1'),
], ids=["json", "not-object", "no-field", "role", "empty", "content", "key-twice", "nested-lone-surrogate"])
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(OrthrusError, match=message):
        list(iter_documents(resolve_sources([str(path)])[0], 3.0))


# --------------------------------------------------------------------------- packing


def test_pieces_and_first_fit_packing():
    docs = documents_from_lists([[1] * n for n in (5, 3, 19, 1, 8, 2)])
    pieces = pieces_of(docs, 8)
    # 19 tokens -> 8 + 8 + 3; the 1-token document trains nothing and is dropped
    assert pieces.tolist() == [[0, 0, 5], [1, 0, 3], [2, 0, 8], [2, 8, 16], [2, 16, 19], [4, 0, 8], [5, 0, 2]]
    rows = pack(pieces[:, 2] - pieces[:, 1], 8)
    lengths = (pieces[:, 2] - pieces[:, 1]).tolist()
    assert rows == [[0, 1], [2], [3], [5], [4, 6]]  # 5+3 fills a row; full pieces leave at once; 3+2 share the last
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)


def test_epoch_plan_covers_every_piece_once_and_rows_keep_documents_apart():
    g = np.random.default_rng(1)
    lengths = g.integers(2, 30, 60)
    docs = documents_from_lists([list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)])
    pools = [Pool("a", docs)]
    plan = plan_epoch(pools, 16, seed=0, epoch=0)
    assert sorted(map(tuple, plan.pieces[:, 1:].tolist())) == sorted(map(tuple, pieces_of(docs, 16).tolist()))
    stream = RowStream(pools, 16, seed=0)
    rows = rows_of(stream, stream.take(len(plan)), pad_id=0)
    for b in range(len(plan)):
        for j in rows.doc[b].unique().tolist():
            at = rows.doc[b] == j
            assert rows.pos[b][at].tolist() == list(range(int(at.sum())))  # positions restart per piece
            ids = rows.ids[b][at & rows.real[b]].tolist()
            if ids:  # a piece is a contiguous run of one document (ids 100*i + k)
                assert len({t // 100 for t in ids}) == 1 and ids == list(range(ids[0], ids[0] + len(ids)))
    assert plan_epoch(pools, 16, 0, 1).pieces.tolist() != plan.pieces.tolist()  # another epoch, another order
    assert plan_epoch(pools, 16, 0, 0).pieces.tolist() == plan.pieces.tolist()  # the same seed and epoch: the same


def test_mix_weights_set_each_pools_share():
    assert mix_counts([100, 300], [None, None]) == [100, 300]
    assert mix_counts([100, 300], [3, 1]) == [300, 100]  # 400 pieces, 3 : 1
    a = documents_from_lists([[1, 2, 3]] * 10)
    b = documents_from_lists([[4, 5, 6, 7]] * 30)
    plan = plan_epoch([Pool("a", a, 3.0), Pool("b", b, 1.0)], 8, seed=0, epoch=0)
    counts = np.bincount(plan.pieces[:, 0], minlength=2).tolist()
    assert counts == [30, 10]  # pool a repeated 3 times, pool b a third of its pieces


def test_row_stream_position_crosses_epochs_and_restores():
    docs = documents_from_lists([[1] * 8] * 5)  # 5 rows per epoch at seq_len 8
    stream = RowStream([Pool("a", docs)], 8, seed=0)
    assert stream.take(3) == [(0, 0), (0, 1), (0, 2)]
    assert stream.take(4) == [(0, 3), (0, 4), (1, 0), (1, 1)]
    state = stream.state()
    later = stream.take(4)
    again = RowStream([Pool("a", docs)], 8, seed=0)
    again.load_state(state)
    assert again.take(4) == later == [(1, 2), (1, 3), (1, 4), (2, 0)]


def test_ranks_get_disjoint_slices_that_cover_the_global_batch():
    refs = list(range(12))
    shares = [split_for_rank(refs, r, 3, 2) for r in range(3)]
    assert shares == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]
    assert split_for_rank(refs, 0, 1, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


# --------------------------------------------------------------------------- the keyed token cache


def test_chat_source_tokens_and_masks(tmp_path, tok):
    source = resolve_sources([str(CHAT_DATA)])[0]
    t = tokenize_source(source, tok, 20.0, False, tmp_path / "cache", log=lambda m: None)
    assert len(t.train) + len(t.heldout) == 16 and len(t.heldout) > 0
    rows = [json.loads(line) for line in CHAT_DATA.read_text().splitlines()]
    expected = [chat_tokens(tok, r["messages"], False) for r in rows]
    got = [(d.tokens_of(i).tolist(), d.mask_of(i).astype(int).tolist()) for d in (t.train, t.heldout) for i in range(len(d))]
    assert sorted(got) == sorted(expected)


def test_cache_is_keyed_by_data_and_tokenizer(tmp_path, tok, monkeypatch):
    import orthrus_min.train.corpus as corpus

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    calls = []
    build = corpus.build_source
    monkeypatch.setattr(corpus, "build_source", lambda *a, **k: calls.append(1) or build(*a, **k))
    root = tmp_path / "cache"

    def key(tokenizer=tok):
        return describe_sources([str(data)], "*.py", tokenizer, 25.0, None, None).keys[0]

    def tokenize(tokenizer=tok):
        return tokenize_source(resolve_sources([str(data)])[0], tokenizer, 25.0, None, root, log=lambda m: None)

    first = tokenize()
    assert tokenize().key == first.key and len(calls) == 1  # cached: not tokenized again
    (data / "m0.py").write_text("changed = True\n")
    assert key() != first.key
    assert tokenize().key != first.key and len(calls) == 2  # changed data: a new cache folder
    other = tmp_path / "other_tok"
    qwen3_style_tokenizer(other, vocab_size=290)
    assert key(Tokenizer(other)) != key()  # another tokenizer: another key


def test_interrupted_cache_writes_leave_nothing_that_breaks_a_later_run(tmp_path, tok):
    """A kill while tokenizing leaves a .tmp-* folder (ignored and removed); a damaged cache folder (a 0-byte array)
    is rebuilt instead of breaking every later run."""
    from orthrus_min.train.corpus import remove_stale_builds

    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"text": f"line {i} " * 30}) + "\n" for i in range(12)))
    source = resolve_sources([str(data)])[0]
    root = tmp_path / "cache"
    good = np.array(tokenize_source(source, tok, 25.0, None, root, log=lambda m: None).train.tokens)  # a copy, not a map
    folder = next(p for p in root.iterdir() if p.name.startswith("t.jsonl-"))
    stale = root / f".tmp-{folder.name}-999"
    stale.mkdir()
    (stale / "train.tokens").write_bytes(b"")
    (folder / "train.tokens").write_bytes(b"")  # damaged: shorter than its offsets say
    again = tokenize_source(source, tok, 25.0, None, root, log=lambda m: None)
    assert len(good) > 100 and np.array_equal(np.asarray(again.train.tokens), good)
    remove_stale_builds(root)
    assert not stale.exists()


def test_eval_prompts_from_chats_and_from_text():
    from orthrus_min.train.evaluate import eval_prompts

    text = documents_from_lists([list(range(100))])
    chat = documents_from_lists([[1, 2, 3, 4, 5, 6], [7, 8, 9]], masks=[[0, 0, 0, 1, 1, 1], [0, 1, 1]])
    assert eval_prompts([text], 0, 12, 100) == [] and eval_prompts([chat], 0, 12, 100) == []
    windows = eval_prompts([text], 3, 12, 100)
    assert len(windows) == 3 and all(len(w) == 12 and w == list(range(w[0], w[0] + 12)) for w in windows)
    assert sorted(eval_prompts([text, chat], 5, 12, 100)) == [[1, 2, 3], [7]]  # a chat's prompt: all before its answer
    assert eval_prompts([chat], 5, 12, max_prompt_len=2) == [[7]]  # prompts longer than the limit are left out
