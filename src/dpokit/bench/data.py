"""The benchmark's data, tokenizer, batches and model weights.

The data is a preference-pair file given with ``--data PATH`` (any format :func:`dpokit.data.load_examples`
reads), or, by default, pairs generated from the seed (:func:`generated_pairs`): multi-turn
``Human: ... Assistant:`` dialogues whose turn counts and turn, prompt and completion lengths follow
those of an HH-RLHF sample (a prompt of about 120 tokens and a completion of about 45 with the
benchmark's 8k BPE, long-tailed), so prompt sharing and packing meet the same proportions as on
real dialogue data.

``--sequence-length L`` makes every pair exactly ``L`` tokens (prompt + completion) instead:
:func:`long_pairs` cuts prompts of ``L - C`` tokens and two different completions of ``C`` tokens
(``--completion-length``, default ``L / 8``) out of the tokenized data read as one token stream,
the shape of long-context preference data (a long conversation or document, a short answer).
"""


from __future__ import annotations

import gc
import math
import os
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

GENERATED_PAIRS = 1600

# Dialogue shape of the HH-RLHF harmless sample: how many Human turns a prompt has (weights for
# 1, 2, ... turns), and the median and log-normal spread of the words in each kind of turn.
TURN_WEIGHTS = (461, 412, 403, 238, 48, 13, 11, 7, 4)
HUMAN_WORDS = (11, 0.65)
ASSISTANT_WORDS = (25, 0.85)
COMPLETION_WORDS = (27, 0.85)
MAX_WORDS = 400

_ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "st", "str", "th", "tr", "wh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo", "y")
_CODAS = ("", "", "", "n", "s", "t", "r", "l", "m", "nd", "ng", "st", "ck", "ll", "rt", "nk")


def _lexicon(rng: random.Random, size: int = 6000) -> Tuple[List[str], List[float]]:
    """Pseudo-words of one to three syllables with Zipf frequencies (cumulative weights), so a
    byte-level BPE splits frequent words into one token and rare ones into several, as in English."""
    words, seen = [], set()
    while len(words) < size:
        syllables = rng.choices((1, 2, 3), weights=(5, 4, 2))[0]
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            words.append(word)
    cumulative, total = [], 0.0
    for rank in range(1, size + 1):
        total += 1.0 / rank
        cumulative.append(total)
    return words, cumulative


def generated_pairs(n: int, seed: int) -> List[Dict[str, str]]:
    """``n`` preference pairs ``{"chosen", "rejected"}`` in HH-RLHF's dialogue format, the same for
    the same ``(n, seed)``: a prompt of one or more ``Human:``/``Assistant:`` turns shared by two
    different completions."""
    rng = random.Random(seed)
    words, cumulative = _lexicon(rng)

    def length(median_spread: Tuple[float, float]) -> int:
        median, spread = median_spread
        return max(1, min(MAX_WORDS, round(median * math.exp(rng.gauss(0.0, spread)))))

    def sentence(median_spread: Tuple[float, float], end: str) -> str:
        text = " ".join(rng.choices(words, cum_weights=cumulative, k=length(median_spread)))
        return text[0].upper() + text[1:] + end

    rows = []
    for _ in range(n):
        turns = rng.choices(range(1, len(TURN_WEIGHTS) + 1), weights=TURN_WEIGHTS)[0]
        prompt = "".join(f"\n\nHuman: {sentence(HUMAN_WORDS, '?')}\n\nAssistant: {sentence(ASSISTANT_WORDS, '.')}"
                         for _ in range(turns - 1))
        prompt += f"\n\nHuman: {sentence(HUMAN_WORDS, '?')}\n\nAssistant:"
        chosen = sentence(COMPLETION_WORDS, ".")
        rejected = sentence(COMPLETION_WORDS, ".")
        while rejected == chosen:
            rejected = sentence(COMPLETION_WORDS, ".")
        rows.append({"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"})
    return rows


def load_benchmark_data(path: Optional[str], seed: int):
    """``(examples, description)``: the pairs of ``path``, or :data:`GENERATED_PAIRS` generated
    pairs (:func:`generated_pairs` with ``seed``) when ``path`` is None."""
    from ..data import load_examples

    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--data {path}: no such file")
        return load_examples(path), os.path.normpath(path)
    from datasets import Dataset

    generated = Dataset.from_list(generated_pairs(GENERATED_PAIRS, seed))
    return load_examples(generated), f"generated ({GENERATED_PAIRS} HH-style pairs, seed {seed})"


def long_pairs(tokenized: Sequence[Any], n: int, length: int, completion_length: int, bos: Optional[int],
               rng: random.Random) -> List[list]:
    """``n`` groups ``[index, prompt_ids, [chosen_ids, rejected_ids]]`` of exactly ``length`` tokens per
    row: the examples' prompts and completions concatenated into one token stream (a leading BOS
    dropped from each), a prompt of ``length - completion_length`` tokens (BOS first) and two
    completions of ``completion_length`` tokens, each cut from the stream at a random offset."""
    if not 0 < completion_length < length:
        raise ValueError(f"--completion-length {completion_length} must lie between 0 and --sequence-length {length}")
    stream: List[int] = []
    for ex in tokenized:
        stream.extend(ex.prompt_ids[1:] if bos is not None and ex.prompt_ids[:1] == [bos] else ex.prompt_ids)
        stream.extend(ex.completions[0])
    prompt_length = length - completion_length - (bos is not None)
    if len(stream) < 2 * length:
        raise ValueError(f"the data has {len(stream)} tokens, too few for pairs of {length} tokens")
    groups = []
    for index in range(n):
        cut = lambda size: stream[(start := rng.randrange(len(stream) - size)):start + size]  # noqa: E731
        prompt = ([bos] if bos is not None else []) + cut(prompt_length)
        chosen = cut(completion_length)
        rejected = cut(completion_length)
        while rejected == chosen:
            rejected = cut(completion_length)
        groups.append([index, prompt, [chosen, rejected]])
    return groups


def prepare(args, workdir: str) -> Dict[str, Any]:
    """Tokenizer, tokenized batches, policy and reference weights saved under ``workdir``."""
    import torch

    from ..data import tokenize_examples
    from ..tiny import tiny_llama, train_tokenizer

    examples, source = load_benchmark_data(args.data, args.seed)
    texts = []
    for ex in examples:
        texts.extend(x for x in (ex.prompt, ex.chosen, ex.rejected) if isinstance(x, str))
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    needed = (args.warmup + args.steps) * args.batch_size
    rng = random.Random(args.seed)
    length = getattr(args, "sequence_length", None)
    if length:
        tokenized, _ = tokenize_examples(examples, tokenizer, max_length=max(args.max_length, 512))
        completion = getattr(args, "completion_length", None) or max(1, length // 8)
        groups = long_pairs(tokenized, needed, length, completion, tokenizer.bos_token_id, rng)
    else:
        tokenized, _ = tokenize_examples(examples, tokenizer, max_length=args.max_length)
        if len(tokenized) < needed:
            raise ValueError(f"{len(tokenized)} usable pairs, the benchmark needs {needed}")
        groups = [[ex.index, ex.prompt_ids, ex.completions] for ex in rng.sample(tokenized, needed)]
    batches = [groups[i:i + args.batch_size] for i in range(0, needed, args.batch_size)]
    model_vocab = getattr(args, "model_vocab", None) or len(tokenizer)
    if model_vocab < len(tokenizer):
        raise ValueError(f"--model-vocab {model_vocab} is smaller than the tokenizer's vocabulary ({len(tokenizer)}); "
                         "it must be at least as large")
    sizes = dict(vocab_size=model_vocab, hidden_size=args.hidden_size, num_layers=args.layers,
                 num_heads=args.heads, intermediate_size=args.intermediate_size,
                 max_position_embeddings=max(args.max_length, length or 0, 512), tokenizer=tokenizer,
                 num_kv_heads=getattr(args, "kv_heads", None), arch=getattr(args, "arch", "llama"))
    policy = tiny_llama(seed=args.seed, **sizes)
    reference = tiny_llama(seed=args.seed + 1, **sizes)  # a different reference: the first loss is not log 2
    dirs = {}
    for name, model in (("policy", policy), ("reference", reference)):
        dirs[name] = os.path.join(workdir, name)
        if args.dtype != "float32":  # the workers load this dtype: the same rounding, half the disk and load time
            model.to(getattr(torch, args.dtype))
        model.save_pretrained(dirs[name], safe_serialization=True)
        tokenizer.save_pretrained(dirs[name])
    embedding = policy.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in policy.parameters()) - embedding
    head_params = sum(p.numel() for p in policy.get_output_embeddings().parameters())
    del policy, reference
    gc.collect()
    return {"source": source, "batches": batches, "dirs": dirs, "pad_id": tokenizer.pad_token_id,
            "params": params, "head_params": head_params, "total_params": params + embedding, "vocab": len(tokenizer),
            "model_vocab": model_vocab,
            "width": args.hidden_size, "torch_threads": torch.get_num_threads()}
