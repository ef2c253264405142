"""Cost of judging K responses: a GPM's K embedding passes vs a pairwise model's passes over pairs.

Both judges use the same network (a tiny Llama sequence classifier, same width and depth), in the
same process, on the same prompt and K responses:

* GPM: one pass per response (``prompt + y_i``), then all K x K preferences as dot products
  (:meth:`dpokit.preference.gpm.GPMJudge.score_matrix`);
* pairwise (PairRM-style): one pass per unordered pair on ``prompt + y_i + " vs " + y_j``, K(K-1)/2
  passes (the full K x K table of an order-sensitive pairwise model would need K(K-1)).

Each timing is the median of ``--repeats`` runs after one warm-up. Prints the curve for K = 2..16
and the ratio pairwise / GPM.

    python benchmarks/gpm_cost.py [--ks 2 4 8 12 16] [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

import torch


def build(hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dpokit.preference.gpm import GPMJudge
    from dpokit.tiny import train_tokenizer

    words = [f"w{i}" for i in range(200)] + ["vs"]
    tokenizer = train_tokenizer([" ".join(words)], vocab_size=256, word_level=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    gpm = LlamaForSequenceClassification(config).eval()
    gpm.config.dpokit_reward_model = {"kind": "gpm", "dim": 2, "prompt_head": False, "tau": 0.1}
    torch.manual_seed(0)
    config.num_labels = 1
    pairwise = LlamaForSequenceClassification(config).eval()
    return GPMJudge(gpm, tokenizer, batch_size=1), pairwise, tokenizer, words


@torch.no_grad()
def pairwise_table(model, tokenizer, prompt, responses):
    """P(y_i > y_j) for i < j from one pass per pair (batch size 1, like the GPM timing)."""
    out = {}
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            enc = tokenizer(prompt + responses[i] + " vs" + responses[j], return_tensors="pt")
            out[i, j] = float(torch.sigmoid(model(**enc).logits[0, 0]))
    return out


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=list(range(2, 17)))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--response-words", type=int, default=40)
    p.add_argument("--json", default=None, help="also write the curve here")
    args = p.parse_args(argv)
    judge, pairwise, tokenizer, words = build(args.hidden, args.layers)
    rng = random.Random(0)
    prompt = " ".join(rng.choice(words[:-1]) for _ in range(30))
    rows = []
    print(f"{'K':>3} {'gpm passes':>10} {'pair passes':>11} {'gpm ms':>9} {'pairwise ms':>12} {'ratio':>7}")
    for k in args.ks:
        responses = [" " + " ".join(rng.choice(words[:-1]) for _ in range(args.response_words)) for _ in range(k)]
        t_gpm = timed(lambda: judge.score_matrix(prompt, responses), args.repeats)
        t_pair = timed(lambda: pairwise_table(pairwise, tokenizer, prompt, responses), args.repeats)
        row = {"K": k, "gpm_passes": k, "pairwise_passes": k * (k - 1) // 2, "gpm_ms": 1000 * t_gpm,
               "pairwise_ms": 1000 * t_pair, "ratio": t_pair / t_gpm}
        rows.append(row)
        print(f"{k:>3} {k:>10} {row['pairwise_passes']:>11} {row['gpm_ms']:>9.1f} {row['pairwise_ms']:>12.1f} "
              f"{row['ratio']:>7.2f}")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    print(f"machine: {machine}; hidden {args.hidden}, {args.layers} layers, {args.response_words}-word responses, "
          f"batch size 1, median of {args.repeats}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
