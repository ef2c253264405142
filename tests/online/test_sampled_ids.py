"""Online rounds train on the token ids the sampler produced, not on a re-tokenization of their text.

With a byte-level BPE tokenizer, decoding sampled ids and encoding the text again can give other ids
(a split the tokenizer would merge, a lone byte of a multi-byte character, a special token); the
update must score the sampled sequence itself, EOS only where it was generated."""

import json

import pytest

from dpokit.config import from_dict
from dpokit.data import PreferencePair, RankedList, UnpairedExample, load_examples, tokenize_examples
from dpokit.data.formats import DataError
from dpokit.io import read_jsonl
from dpokit.online.loop import OnlineLoop

from conftest import ONLINE_WORDS as WORDS

from .conftest import online_raw

CORPUS = [" ".join(WORDS) + " q :"] * 4 + [f"q {x} {y} : {w}" for x in "abcd" for y in "efgh"
                                           for w in ("even", "odd", "yes no")]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from dpokit.tiny import train_tokenizer

    tok = train_tokenizer(CORPUS, vocab_size=300)  # tokenizers' BPE with the ByteLevel pre-tokenizer
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert type(tok.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    return tok


@pytest.fixture(scope="module")
def bpe_policy_dir(tmp_path_factory, bpe_tokenizer):
    from dpokit.tiny import tiny_llama

    path = tmp_path_factory.mktemp("bpe-policy")
    model = tiny_llama(len(bpe_tokenizer), hidden_size=16, num_layers=1, num_heads=2, max_position_embeddings=64,
                       seed=0, tokenizer=bpe_tokenizer)
    model.save_pretrained(path, safe_serialization=True)
    bpe_tokenizer.save_pretrained(path)
    return str(path)


def split_ids(tok, word):
    """``word`` as one id per byte-level symbol (a sequence a sampler can produce) and as the tokenizer encodes it."""
    pieces = [tok.convert_tokens_to_ids(symbol) for symbol in tok.tokenize(word)[0]]
    return pieces, tok(word, add_special_tokens=False)["input_ids"]


def test_tokenize_examples_keeps_given_ids_where_text_would_retokenize_differently(bpe_tokenizer):
    tok, eos = bpe_tokenizer, bpe_tokenizer.eos_token_id
    sampled, encoded = split_ids(tok, " even")
    assert tok.decode(sampled) == " even" and sampled != encoded  # the case exists: not a vacuous test
    prompt = tok("q a e :")["input_ids"]
    pair = PreferencePair("q a e :", " even", " odd", {}, "x:1", prompt, sampled + [eos], split_ids(tok, " odd")[0])
    (out,), _ = tokenize_examples([pair], tok, max_length=32)
    assert out.prompt_ids == prompt
    assert out.completions == [sampled + [eos], split_ids(tok, " odd")[0]]  # no EOS added to the cut one
    (text,), _ = tokenize_examples([PreferencePair("q a e :", " even", " odd")], tok, max_length=32)
    assert text.completions[0] == encoded + [eos]  # the text path: re-encoded, EOS appended

    # one side given as ids, the other as text; unpaired and lists read their ids the same way
    mixed = PreferencePair("q a e :", " even", " odd", {}, "x:2", prompt, sampled, None)
    (out,), _ = tokenize_examples([mixed], tok, max_length=32)
    assert out.completions == [sampled, split_ids(tok, " odd")[1] + [eos]]
    (out,), _ = tokenize_examples([UnpairedExample("q", " even", True, {}, "x:3", prompt, sampled)], tok, 32)
    assert out.prompt_ids == prompt and out.completions == [sampled]
    ranked = RankedList("q", [" even", " odd", " yes"], [1.0, 0.0, 2.0], location="x:4", prompt_ids=prompt,
                        response_ids=[sampled, None, [5, 6]])
    (out,), _ = tokenize_examples([ranked], tok, 32)
    assert out.completions == [sampled, split_ids(tok, " odd")[1] + [eos], [5, 6]]

    # truncation rules as for text: the prompt (keep_end / keep_start), then the completion's end
    long_prompt = list(range(10, 20))
    (kept,), report = tokenize_examples([PreferencePair("q", "a", "b", {}, "x:5", long_prompt, [7, 8, 9], [7])],
                                        tok, max_length=6, max_prompt_length=4)
    assert kept.prompt_ids == long_prompt[-4:] and kept.completions == [[7, 8], [7]]
    assert report.prompt_truncated == 1 and report.completion_truncated == 1
    (kept,), _ = tokenize_examples([PreferencePair("q", "a", "b", {}, "x:5", long_prompt, [7], [8])], tok,
                                   max_length=6, max_prompt_length=4, truncation_mode="keep_start")
    assert kept.prompt_ids == long_prompt[:4]

    with pytest.raises(DataError, match=rf"x:6.*rejected_ids.*entry 1 is token id {len(tok)}.*\({len(tok)} ids"):
        tokenize_examples([PreferencePair("q", "a", "b", {}, "x:6", prompt, [1], [2, len(tok)])], tok, 32)


def test_id_columns_are_read_and_checked_naming_file_and_line(tmp_path, bpe_tokenizer):
    path = tmp_path / "train.jsonl"
    good = {"prompt": "q", "chosen": " even", "rejected": " odd", "prompt_ids": [1, 5], "chosen_ids": [6, 7, 2],
            "rejected_ids": [8], "weight": 2.0}
    path.write_text(json.dumps(good) + "\n")
    (pair,) = load_examples(str(path))
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids, pair.extras) == ([1, 5], [6, 7, 2], [8], {"weight": 2.0})
    (as_list,) = load_examples(str(path), "lists")
    assert as_list.prompt_ids == [1, 5] and as_list.response_ids == [[6, 7, 2], [8]]
    chosen, rejected = load_examples(str(path), "unpaired")
    assert (chosen.completion_ids, rejected.completion_ids) == ([6, 7, 2], [8])
    for change, message in (({"chosen_ids": [6, 1.5]}, r"chosen_ids.*entry 1 is 1.5"),
                            ({"chosen_ids": [6, True]}, r"chosen_ids.*entry 1 is True"),
                            ({"rejected_ids": []}, r"rejected_ids.*non-empty list"),
                            ({"rejected_ids": "8"}, r"rejected_ids.*got str"),
                            ({"prompt_ids": None}, r"prompt_ids.*is missing, but chosen_ids is given")):
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
        with pytest.raises(DataError, match=r"train.jsonl:2.*" + message):
            load_examples(str(path))
    lists = tmp_path / "lists.jsonl"
    lists.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"], "scores": [1, 0], "prompt_ids": [1],
                                 "response_ids": [[5], None]}) + "\n")
    (item,) = load_examples(str(lists), "lists")
    assert item.response_ids == [[5], None]
    lists.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"], "scores": [1, 0], "prompt_ids": [1],
                                 "response_ids": [[5]]}) + "\n")
    with pytest.raises(DataError, match=r"lists.jsonl:1.*response_ids.*list of 2 entries"):
        load_examples(str(lists), "lists")


class TrainerSpy(OnlineLoop):
    """Keeps, for every Trainer of the run, the examples it was built with and those it ended with."""

    def make_trainer(self, config, callbacks=(), **options):
        trainer = super().make_trainer(config, callbacks, **options)
        self.seen = getattr(self, "seen", []) + [list(trainer.train_examples)]

        def keep(trainer, step):
            self.seen.append(list(trainer.train_examples))

        trainer.callbacks.append(keep)
        return trainer


def sampled_sequences(rdir):
    """``{(prompt ids, completion ids)}`` of every sample a round's samples files hold."""
    out = set()
    for path in sorted(rdir.glob("samples*.jsonl")):
        for row in read_jsonl(str(path)):
            assert len(row["completion_ids"]) == len(row["responses"])
            out.update((tuple(row["prompt_ids"]), tuple(ids)) for ids in row["completion_ids"])
    return out


def run_spy(policy_dir, tmp_path, prompts_file, **online):
    raw = online_raw(policy_dir, tmp_path / "run", "online_dpo", rounds=1, prompts=prompts_file, **online)
    loop = TrainerSpy(from_dict(raw))
    assert loop.run()["status"] == "completed"
    return loop, tmp_path / "run" / "rounds" / "round-000"


@pytest.mark.parametrize("refresh_every", [0, 1])
def test_online_dpo_trains_on_the_sampled_ids(bpe_policy_dir, bpe_tokenizer, prompts_file, tmp_path, refresh_every):
    tok, eos = bpe_tokenizer, bpe_tokenizer.eos_token_id
    loop, rdir = run_spy(bpe_policy_dir, tmp_path, prompts_file, refresh_every=refresh_every)
    sampled = sampled_sequences(rdir)
    trained = [(tuple(ex.prompt_ids), tuple(c)) for examples in loop.seen for ex in examples for c in ex.completions]
    assert trained and set(trained) <= sampled  # every trained sequence is one the policy sampled
    retokenized = 0  # what the text path would have trained on instead
    for prompt_ids, ids in set(trained):
        text = tok.decode(list(ids), skip_special_tokens=True)
        retokenized += tuple(tok(text, add_special_tokens=False)["input_ids"] + [eos]) != ids
    assert retokenized > 0  # the sampled ids really differ from a re-tokenization here
    assert any(ids[-1] != eos and len(ids) == 5 for _, ids in trained)  # cut at max_new_tokens: no EOS added
    if refresh_every:
        assert len(list(rdir.glob("samples-*.jsonl"))) > 1  # the buffer was refilled from fresh samples
    else:
        rows = read_jsonl(str(rdir / "train.jsonl"))
        assert all({"prompt_ids", "chosen_ids", "rejected_ids"} <= set(row) for row in rows)


def test_a_samples_file_without_ids_still_resumes_on_the_text(policy_dir, prompts_file, tmp_path, caplog):
    raw = online_raw(policy_dir, tmp_path / "run", "online_dpo", rounds=1, prompts=prompts_file)
    loop = OnlineLoop(from_dict(raw))
    rdir = tmp_path / "run" / "rounds" / "round-000"
    rdir.mkdir(parents=True)
    prompts = loop.strategy.round_prompts(0)
    old = [{"index": i, "source": "policy", "prompt": p, "responses": ["a b c", "a", "d e"], "num_tokens": [3, 1, 2]}
           for i, p in enumerate(prompts)]
    (rdir / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in old))
    with caplog.at_level("WARNING", logger="dpokit"):
        groups = loop.generate(0, prompts, str(rdir))
    assert "8 sample row(s) carry no token ids" in caplog.text
    loop.score(groups, str(rdir / "scores.jsonl"))
    rows, _ = loop.strategy.rows(groups, 0)
    assert rows and all(set(row) == {"prompt", "chosen", "rejected"} for row in rows)  # text: tokenized as before


def test_rows_carry_the_ids_of_each_side_and_lists_one_entry_per_response():
    from types import SimpleNamespace

    from dpokit.online.rounds import PAIR_ROW_KEYS, JudgedPrompt, pair_info
    from dpokit.online.strategies import STRATEGIES

    group = JudgedPrompt(0, "q")
    group.add_samples("policy", {"responses": ["a", "b"], "num_tokens": [1, 2], "prompt_ids": [1, 9],
                                 "completion_ids": [[5, 2], [6, 7]]})
    group.responses["teacher"] = ["t"]  # an answer that was not sampled: no ids
    group.scores = [0.0, 1.0, 2.0]
    assert group.flat_ids() == [[5, 2], [6, 7], None]
    assert group.pair_row(1, 0, w=1.0) == {"prompt": "q", "chosen": "b", "rejected": "a", "w": 1.0,
                                           "prompt_ids": [1, 9], "chosen_ids": [6, 7], "rejected_ids": [5, 2]}
    assert group.pair_row(2, 0) == {"prompt": "q", "chosen": "t", "rejected": "a", "prompt_ids": [1, 9],
                                    "rejected_ids": [5, 2]}
    info = pair_info(group, 3, 1, 0, group.scores)
    assert info["chosen_ids"] == [6, 7] and set(PAIR_ROW_KEYS) <= set(info)  # DNO replays these columns
    strategy = STRATEGIES["online_dpo"](SimpleNamespace(online=SimpleNamespace(max_new_tokens=5)), {})
    (row,) = strategy.list_rows([group])
    assert row["responses"] == ["a", "b", "t"] and row["response_ids"] == [[5, 2], [6, 7], None]
    assert row["prompt_ids"] == [1, 9]
    group.add_samples("reference", {"responses": ["c"], "prompt_ids": [1, 8], "completion_ids": [[4]]})
    assert group.pair_row(1, 2) == {"prompt": "q", "chosen": "b", "rejected": "c"}  # prompts differ: text only
    old = JudgedPrompt(1, "q")
    old.add_samples("policy", {"responses": ["a", "b"]})  # a samples row of an older version
    assert old.pair_row(0, 1) == {"prompt": "q", "chosen": "a", "rejected": "b"}
