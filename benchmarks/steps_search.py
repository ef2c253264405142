"""MCTS-DPO search throughput: shared-prefix expansion (one prefix forward, its KV cache repeated for
the siblings) against naive re-encoding (each sibling alone, no cache), on the arithmetic task with a
tiny Llama warmed up on noisy solutions, in one process. The same as ``dpokit bench --modality steps``
(:mod:`dpokit.bench.steps`), which takes every option:

    python benchmarks/steps_search.py [--problems 10] [--warmup-steps 150] [--json] [...]
"""

import sys

from dpokit.bench import main

if __name__ == "__main__":
    sys.exit(main(["--modality", "steps", *sys.argv[1:]]))
