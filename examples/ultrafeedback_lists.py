"""Write openbmb/UltraFeedback as ranked lists for ``data.kind: lists`` (see examples/ranked_lists.yaml).

    python examples/ultrafeedback_lists.py --output data/ultrafeedback_lists.jsonl
    python examples/ultrafeedback_lists.py --source /path/to/ultrafeedback.parquet --output lists.jsonl
    python examples/ultrafeedback_lists.py --limit 2000 --output data/lists-small.jsonl

An UltraFeedback record has an ``instruction`` and ``completions``, each with a ``response`` and an
``overall_score`` (GPT-4's rating). One list per record:

    {"prompt": [{"role": "user", "content": instruction}],
     "responses": [[{"role": "assistant", "content": response}], ...],
     "scores": [overall_score, ...]}

Completions with an empty response or no finite score are left out; a record keeps its list only
when at least two completions remain and their scores are not all equal (such a list ranks nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, Iterable, Iterator, Optional


def to_list(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """One UltraFeedback record as a dpokit ranked list, or None when it ranks nothing."""
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        return None
    responses, scores = [], []
    for completion in record.get("completions") or []:
        text, score = completion.get("response"), completion.get("overall_score")
        if not isinstance(text, str) or not text.strip():
            continue
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        responses.append([{"role": "assistant", "content": text}])
        scores.append(float(score))
    if len(responses) < 2 or len(set(scores)) < 2:
        return None
    return {"prompt": [{"role": "user", "content": instruction}], "responses": responses, "scores": scores}


def convert(records: Iterable[Dict[str, Any]], limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    written = 0
    for record in records:
        if limit is not None and written >= limit:
            return
        ranked = to_list(record)
        if ranked is not None:
            written += 1
            yield ranked


def read_source(source: str, split: str):
    """Records of a hub dataset id, or of a local .jsonl/.json/.parquet copy."""
    if source.endswith(".jsonl") and os.path.exists(source):
        with open(source, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    import datasets

    if os.path.exists(source):
        builder = "parquet" if source.endswith(".parquet") else "json"
        return datasets.load_dataset(builder, data_files=source, split="train")
    return datasets.load_dataset(source, split=split)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="openbmb/UltraFeedback", help="hub id or local .jsonl/.json/.parquet")
    parser.add_argument("--split", default="train")
    parser.add_argument("--output", required=True, help="the .jsonl file to write")
    parser.add_argument("--limit", type=int, default=None, help="write at most this many lists")
    args = parser.parse_args(argv)
    records = read_source(args.source, args.split)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    count = 0
    with open(args.output, "w", encoding="utf-8") as handle:
        for ranked in convert(records, args.limit):
            handle.write(json.dumps(ranked, ensure_ascii=False) + "\n")
            count += 1
    print(f"wrote {count} lists to {args.output}", file=sys.stderr)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())
