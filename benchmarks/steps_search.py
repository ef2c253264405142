"""MCTS-DPO search throughput: shared-prefix expansion (one prefix forward, its KV cache repeated for
the siblings) against naive re-encoding (each sibling alone, no cache), on the arithmetic task with a
tiny Llama warmed up on noisy solutions, in one process.

    python benchmarks/steps_search.py [--problems 20] [--warmup-steps 300] [--json out.json]

Prints expansions/s, step pairs per 1k generated tokens and tokens the model read per generated token.
"""

import argparse
import json

import torch

from dpokit.scoring.steps import separator_ids
from dpokit.steps import SearchConfig, SearchTask
from dpokit.steps.bench import compare_expansion
from dpokit.tasks.arithmetic import STEP_SEPARATOR, ArithmeticTask
from dpokit.tiny import tiny_llama, train_tokenizer
from dpokit.train.sft import sft_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--n-ops", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = ArithmeticTask(n_ops=args.n_ops)
    train, held = task.split(400, args.problems)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=64, num_layers=2, max_position_embeddings=128, tokenizer=tokenizer)
    sft_train(model, tokenizer, task.demonstrations(train, 0.3), steps=args.warmup_steps)
    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    decode = lambda ids: tokenizer.decode([i for i in ids if i not in sep], skip_special_tokens=True).strip()  # noqa: E731
    verdict = lambda p, s: task.verify(task.problem_of(p), s)  # noqa: E731
    search_task = SearchTask(evaluate=lambda p, s: float(all(verdict(p, s).steps)),
                             outcome=lambda p, s: verdict(p, s).outcome, decode=decode,
                             gold=lambda p: task.problem_of(p).gold())
    config = SearchConfig(n_iters=4, depth_limit=args.n_ops + 2, filter_correct=False)
    rows = compare_expansion(model, tokenizer, search_task, [task.prompt(p) for p in held], sep, config)
    print(f"speed-up (expansions/s): {rows[0]['expansions_per_s'] / rows[1]['expansions_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
