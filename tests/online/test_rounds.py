"""Round helpers: pair selection from judged responses, and prompt loading."""

import json

from dpokit.online.loop import load_prompts, select_pairs


def test_select_pairs_and_prompt_loading(tmp_path):
    assert select_pairs(["a", "b", "c"], [0.0, 2.0, 1.0]) == [(1, 0)]
    assert select_pairs(["a", "b", "c"], [0.0, 2.0, 1.0], "all_pairs") == [(1, 2), (1, 0), (2, 0)]
    assert select_pairs(["a", "a", "c"], [1.0, 1.0, 1.0]) == []  # ties give nothing
    assert select_pairs(["a", "b"], [1.0, 0.5], min_margin=0.6) == []
    assert select_pairs(["a", "b"], [1.0, 0.5], min_margin=0.5) == [(0, 1)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"prompt": "x", "chosen": "a", "rejected": "b"}, {"prompt": "x", "chosen": "c", "rejected": "d"},
        {"chosen": "Human: y\n\nAssistant: a", "rejected": "Human: y\n\nAssistant: b"})))
    assert load_prompts(str(path)) == ["x", "Human: y\n\nAssistant:"]
