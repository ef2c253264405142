"""Claim: a general preference model (GPM) fits a cyclic preference that a Bradley-Terry model cannot.

Data: three response classes A ("rock"), B ("paper"), C ("scissors") with the cycle B > A, C > B, A > C,
each relation equally often; every pair has a prompt (a topic word and filler words) and responses
carry random filler words, so the model must read the class. Training and held-out pairs use disjoint
prompts. Both models are the same tiny Llama (same initialisation per seed) trained on the same pairs
with ``dpokit.preference.rm_train.fit``: ``bt`` with the Bradley-Terry loss, ``gpm`` with the GPM loss
(embedding dimension 2, tau 0.1).

Criteria (fixed before running), on held-out prompts, over seeds:
* BT's accuracy on the three relations is at most 2/3 (+0.05 for finite samples) at every seed;
* GPM's accuracy on each of the three relations is at least 0.9 at every seed.

With ``--hh FILE`` (or ``DPOKIT_HH_RLHF_FILE``; a JSONL of HH-RLHF ``chosen``/``rejected`` dialogues that is
not part of the repository) the same two kinds train on a split of that file and the held-out
accuracy, ECE and Brier are reported (criterion: GPM's mean accuracy >= BT's); reported either way.

    python benchmarks/claims/gpm_cyclic.py [--seeds 0 1 2] [--hh HH.jsonl] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any, Dict, List, Sequence

import torch

CLASSES = ("rock", "paper", "scissors")
BEATS = {(1, 0), (2, 1), (0, 2)}  # (winner, loser): paper > rock, scissors > paper, rock > scissors
FILLER = "the a so very quite just really well maybe truly".split()


def cyclic_pairs(prompts: Sequence[str], per_relation: int, rng: random.Random) -> List[Any]:
    from dpokit.data.formats import PreferencePair

    def response(c):
        words = [CLASSES[c]] + [rng.choice(FILLER) for _ in range(rng.randint(0, 3))]
        rng.shuffle(words)
        return " " + " ".join(words)

    pairs = []
    for w, l in sorted(BEATS):
        for _ in range(per_relation):
            prompt = rng.choice(prompts)
            pairs.append(PreferencePair(prompt, response(w), response(l), {"relation": f"{CLASSES[w]}>{CLASSES[l]}"},
                                        location=f"synthetic:{len(pairs) + 1}"))
    rng.shuffle(pairs)
    return pairs


def prompts_of(topics: Sequence[str], rng: random.Random, n: int) -> List[str]:
    return [f"tell me about {rng.choice(topics)} {rng.choice(FILLER)} {rng.choice(FILLER)}" for _ in range(n)]


def tiny_model(tokenizer, seed: int, hidden: int = 32, layers: int = 1, positions: int = 64):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=positions, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config)


def with_kind(model, kind_name: str, settings: Dict[str, Any]):
    """The same network with a fresh head of the kind's size (initialised from the seed)."""
    from dpokit.preference.rm_kinds import KINDS

    kind = KINDS[kind_name]
    n = kind.num_labels(settings)
    torch.manual_seed(12345)
    model.score = torch.nn.Linear(model.config.hidden_size, n, bias=False)
    model.config.num_labels = n
    model.config.dpokit_reward_model = {"kind": kind_name, **settings}
    return kind


KIND_SETTINGS = {"bt": {}, "gpm": {"dim": 2, "prompt_head": False, "tau": 0.1, "normalize": False}}


def train_and_eval(tokenizer, train, held_out, seed, epochs, lr, max_length, model_args=None):
    import copy

    from dpokit.preference.rm_train import evaluate, fit

    base = tiny_model(tokenizer, seed, **(model_args or {}))
    out = {}
    for name, settings in KIND_SETTINGS.items():
        model = copy.deepcopy(base)
        kind = with_kind(model, name, settings)
        fit(kind, model, tokenizer, train, epochs=epochs, lr=lr, batch_size=16, max_length=max_length, seed=seed,
            log_every=0)
        result = evaluate(model, tokenizer, held_out, 64, max_length, kind=kind)
        if held_out and "relation" in held_out[0].extras:
            probs = kind.pair_probabilities(model, tokenizer, held_out, 64, max_length)
            for rel in sorted({p.extras["relation"] for p in held_out}):
                idx = [i for i, p in enumerate(held_out) if p.extras["relation"] == rel]
                result[f"acc[{rel}]"] = float((probs[idx] > 0.5).float().mean())
        out[name] = result
    return out


def spread(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {sd:.3f} (min {min(values):.3f}, max {max(values):.3f})"


def run_cyclic(seeds, quick=False, log=print) -> Dict[str, Any]:
    from dpokit.tiny import train_tokenizer

    topics = [f"topic{i}" for i in range(40)]
    tokenizer = train_tokenizer([" ".join(list(CLASSES) + FILLER + topics + ["tell", "me", "about"])],
                                vocab_size=128, word_level=True)
    per_seed = {}
    for seed in seeds:
        rng = random.Random(seed)
        order = topics[:]
        rng.shuffle(order)
        train_topics, held_topics = order[:30], order[30:]
        train = cyclic_pairs(prompts_of(train_topics, rng, 60), 40 if quick else 100, rng)
        held = cyclic_pairs(prompts_of(held_topics, rng, 30), 30 if quick else 100, rng)
        per_seed[seed] = train_and_eval(tokenizer, train, held, seed, epochs=6 if quick else 8, lr=3e-3,
                                        max_length=32)
        log(f"seed {seed}: " + json.dumps({k: {m: round(v, 3) for m, v in r.items() if isinstance(v, float)}
                                           for k, r in per_seed[seed].items()}))
    return per_seed


def run_hh(path: str, seeds, quick=False, limit=None, log=print) -> Dict[str, Any]:
    from dpokit.data.formats import load_examples
    from dpokit.tiny import train_tokenizer

    pairs = load_examples(path, "pairs")
    if quick:
        pairs = pairs[:160]
    elif limit:
        pairs = pairs[:limit]
    texts = [p.prompt + p.chosen for p in pairs[:400]] + [p.prompt + p.rejected for p in pairs[:400]]
    tokenizer = train_tokenizer(texts, vocab_size=2000)
    per_seed = {}
    for seed in seeds:
        rng = random.Random(seed)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_eval = len(pairs) // 4
        held = [pairs[i] for i in order[:n_eval]]
        train = [pairs[i] for i in order[n_eval:]]
        per_seed[seed] = train_and_eval(tokenizer, train, held, seed, epochs=1, lr=1e-3, max_length=128,
                                        model_args={"hidden": 32, "layers": 1, "positions": 256})
        log(f"HH seed {seed}: " + json.dumps({k: {m: round(v, 3) for m, v in r.items() if isinstance(v, float)}
                                              for k, r in per_seed[seed].items()}))
    return per_seed


def cyclic_report(cyclic, seeds, record) -> List[str]:
    lines = ["cyclic preference, held-out prompts (mean +- sd over seeds):"]
    for kind in KIND_SETTINGS:
        for key in ["accuracy"] + sorted(k for k in cyclic[seeds[0]][kind] if k.startswith("acc[")):
            lines.append(f"  {kind:4s} {key:22s} {spread([cyclic[s][kind][key] for s in seeds])}")
    bt_ok = all(cyclic[s]["bt"]["accuracy"] <= 2 / 3 + 0.05 for s in seeds)
    relations = [k for k in cyclic[seeds[0]]["gpm"] if k.startswith("acc[")]
    gpm_ok = all(cyclic[s]["gpm"][k] >= 0.9 for s in seeds for k in relations)
    lines += [f"  [{'yes' if bt_ok else 'no'}] BT accuracy <= 2/3 (+0.05) at every seed",
              f"  [{'yes' if gpm_ok else 'no'}] GPM >= 0.9 on each of the three relations at every seed",
              f"claim (cyclic): {'HOLDS' if bt_ok and gpm_ok else 'DOES NOT HOLD'}"]
    record.update(cyclic=cyclic, cyclic_holds=bt_ok and gpm_ok)
    return lines


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hh", default=os.environ.get("DPOKIT_HH_RLHF_FILE"),
                   help="HH-RLHF pairs JSONL (default: $DPOKIT_HH_RLHF_FILE); skipped without one")
    p.add_argument("--hh-limit", type=int, default=None, help="use the first N pairs of the HH file")
    p.add_argument("--hh-only", action="store_true", help="only the HH-RLHF part")
    p.add_argument("--out", default="runs/claims/gpm_cyclic")
    p.add_argument("--quick", action="store_true", help="fewer pairs and steps (a smoke test)")
    args = p.parse_args(argv)
    started = time.time()
    if args.hh_only and not args.hh:
        p.error("--hh-only needs --hh FILE (or DPOKIT_HH_RLHF_FILE)")
    cyclic = {} if args.hh_only else run_cyclic(args.seeds, args.quick)
    record: Dict[str, Any] = {"seeds": args.seeds, "quick": args.quick}
    lines = [] if args.hh_only else cyclic_report(cyclic, args.seeds, record)

    if args.hh:
        hh = run_hh(args.hh, args.seeds, args.quick, args.hh_limit)
        lines.append("HH-RLHF sample, held-out quarter (mean +- sd over seeds):")
        for kind in KIND_SETTINGS:
            for key in ("accuracy", "ece", "brier"):
                lines.append(f"  {kind:4s} {key:9s} {spread([hh[s][kind][key] for s in args.seeds])}")
        bt_mean = statistics.fmean(hh[s]["bt"]["accuracy"] for s in args.seeds)
        gpm_mean = statistics.fmean(hh[s]["gpm"]["accuracy"] for s in args.seeds)
        lines.append(f"claim (HH): GPM mean accuracy {gpm_mean:.3f} vs BT {bt_mean:.3f}: "
                     f"{'HOLDS' if gpm_mean >= bt_mean else 'DOES NOT HOLD'}")
        record.update(hh=hh, hh_holds=gpm_mean >= bt_mean)
    else:
        lines.append("HH-RLHF part skipped (give --hh FILE or set DPOKIT_HH_RLHF_FILE)")
    text = "\n".join(lines)
    print(text)
    record.update(output=text, seconds=round(time.time() - started, 1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "claim.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    return record


if __name__ == "__main__":
    main()
