"""A built-in two-objective task for directional preference alignment (DPA) and RPS, with verifiable
rewards whose trade-off has a known answer.

Prompt: ``mix : c a f .`` (three letters, no meaning beyond variety), conditioned on a direction ``v`` by
DPA's system-prompt sentence (``Your response should maximize weighted rating = x*97 + y*26.``). The
tokenizer splits digits, so the weights are read digit by digit (``x * 9 7``).
Response: words, each ``x`` or ``y`` (the warm-up writes :data:`LENGTH` of them in a random mix).
Objectives (:func:`mix_rewards`), with ``n`` the number of words and ``n_x``, ``n_y`` the counts::

    r_x = sqrt(n_x / n)        r_y = sqrt(n_y / n)        (0, 0 for an empty response)

``r_x^2 + r_y^2 <= 1``: the two trade off on a quarter circle, so the response that maximizes ``v . r``
has ``r = v``, i.e. a y-share ``n_y / n = sin^2 theta`` for ``v = (cos theta, sin theta)``: the direction
asks for a proportion, and whether the policy delivers it is checkable (:func:`y_share`, :func:`angle_of`).

:func:`run_dpa_demo` is the experiment of ``benchmarks/claims/dpa.py``: a tiny Llama, an SFT warm-up that
ignores the direction, ``online.strategy: dpa_rsf`` rounds, then per angle the mean objectives of fresh
samples on held-out prompts, and RPS against direct conditioning at out-of-range angles.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..io import write_jsonl
from ..preference.multi_objective import angle_direction, direction_prompt

OBJECTIVES = ("x", "y")
LETTERS = "abcdefgh"
LENGTH = 8


def mix_rewards(prompts: Sequence[Any], responses: Sequence[str]) -> List[List[float]]:
    """``[r_x, r_y]`` per response (see the module docstring); the ``rewards`` of ``dpa_rsf``."""
    out = []
    for text in responses:
        words = text.split()
        n = len(words)
        out.append([math.sqrt(words.count(w) / n) if n else 0.0 for w in OBJECTIVES])
    return out


def y_share(response: str) -> float:
    words = response.split()
    return words.count("y") / len(words) if words else 0.0


def angle_of(r_x: float, r_y: float) -> float:
    """The angle (degrees) of a reward vector: the trade-off a response (or a mean) landed on."""
    return math.degrees(math.atan2(r_y, r_x))


def build_tokenizer():
    """Word-level tokenizer over the task's words, digits and the direction sentence; digits split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ..tiny import CHAT_TEMPLATE, SPECIAL_TOKENS

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                       pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    corpus = [direction_prompt("mix : " + " ".join(LETTERS) + " .", [1.0, 1.0], OBJECTIVES), "0123456789 x y"]
    tokenizer.train_from_iterator(corpus, trainer=trainers.WordLevelTrainer(vocab_size=128,
                                                                            special_tokens=SPECIAL_TOKENS))
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>", unk_token="<unk>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def make_prompts(n: int, seed: int) -> List[str]:
    rng = random.Random(seed)
    return ["mix : " + " ".join(rng.choice(LETTERS) for _ in range(3)) + " ." for _ in range(n)]


def demonstrations(prompts: Sequence[str], seed: int) -> List[Tuple[str, str]]:
    """Warm-up data that ignores the direction: a random direction in the prompt, a random mix answered."""
    rng = random.Random(seed)
    rows = []
    for p in prompts:
        v = angle_direction(rng.uniform(0.0, 90.0))
        share = rng.random()
        rows.append((direction_prompt(p, v, OBJECTIVES), " ".join("y" if rng.random() < share else "x"
                                                                 for _ in range(LENGTH))))
    return rows


@dataclass
class DPASettings:
    output_dir: str = "runs/dpa"
    seed: int = 0
    train_angles: List[float] = field(default_factory=lambda: [0.0, 90.0])
    eval_angles: List[float] = field(default_factory=lambda: [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0])
    rps_angles: List[float] = field(default_factory=list)  # RPS vs direct conditioning at these angles
    rps_k: int = 5
    rps_delta: float = 10.0
    n_train_prompts: int = 512
    n_eval_prompts: int = 64
    eval_samples: int = 4
    rounds: int = 4
    samples_per_prompt: int = 8
    prompts_per_round: int = 256
    warmup_steps: int = 300
    hidden_size: int = 64
    layers: int = 2
    lr: float = 3e-3
    epochs: int = 2
    batch_size: int = 32


def evaluate_angles(model, tokenizer, prompts: Sequence[str], angles: Sequence[float], samples: int,
                    seed: int) -> Dict[str, Dict[str, float]]:
    """Per angle: mean ``r_x``, ``r_y``, y-share and the angle of the mean reward vector of fresh samples."""
    from ..preference.directional import sample_at
    from ..sampling import SamplingConfig

    out = {}
    for a in angles:
        config = SamplingConfig(max_new_tokens=LENGTH + 2, seed=seed, top_k=0, batch_size=256)
        texts = [t for group in sample_at(model, tokenizer, prompts, angle_direction(a), OBJECTIVES, samples, config)
                 for t in group]
        r = mix_rewards(None, texts)
        rx, ry = (sum(col) / len(col) for col in zip(*r))
        out[f"{a:g}"] = {"r_x": rx, "r_y": ry, "y_share": sum(map(y_share, texts)) / len(texts),
                         "angle": angle_of(rx, ry), "value": sum(x * c for x, c in zip((rx, ry), angle_direction(a)))}
    return out


def run_dpa_demo(settings: DPASettings, log=print) -> Dict[str, Any]:
    """Warm-up, ``dpa_rsf`` rounds, evaluation per angle before and after (and RPS); writes summary.json."""
    from transformers import AutoModelForCausalLM

    from ..config import from_dict
    from ..online.loop import OnlineLoop
    from ..preference.directional import checked_rewards, rps_compare
    from ..sampling import SamplingConfig
    from ..tiny import tiny_llama
    from ..train.sft import sft_train

    started = time.time()
    s = settings
    out = s.output_dir
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(s.seed)
    tokenizer = build_tokenizer()
    model = tiny_llama(len(tokenizer), hidden_size=s.hidden_size, num_layers=s.layers, max_position_embeddings=64,
                       seed=s.seed, tokenizer=tokenizer)
    train_prompts = make_prompts(s.n_train_prompts, s.seed)
    eval_prompts = make_prompts(s.n_eval_prompts, s.seed + 10_000)
    log(f"[1/3] warm-up ({s.warmup_steps} SFT steps on answers that ignore the direction)")
    sft_train(model, tokenizer, demonstrations(train_prompts, s.seed), steps=s.warmup_steps, seed=s.seed)
    warmup_dir = os.path.join(out, "warmup")
    model.save_pretrained(warmup_dir, safe_serialization=True)
    tokenizer.save_pretrained(warmup_dir)
    before = evaluate_angles(model, tokenizer, eval_prompts, s.eval_angles, s.eval_samples, s.seed + 2)
    prompts_path = os.path.join(out, "prompts.jsonl")
    write_jsonl(prompts_path, [{"prompt": p} for p in train_prompts])
    raw = {
        "model": {"name_or_path": warmup_dir},
        "data": {"max_length": 64},
        "loss": {"name": "sft_unpaired"},
        "train": {"output_dir": os.path.join(out, "online"), "seed": s.seed, "epochs": s.epochs,
                  "batch_size": s.batch_size, "lr": s.lr, "scheduler": "constant", "warmup_ratio": 0.0,
                  "log_every": 50, "report_to": [], "progress_bar": False, "mixed_precision": "no"},
        "online": {"strategy": "dpa_rsf", "rounds": s.rounds, "prompts": prompts_path,
                   "prompts_per_round": s.prompts_per_round, "samples_per_prompt": s.samples_per_prompt,
                   "max_new_tokens": LENGTH + 2, "temperature": 1.0, "top_k": 0, "generation_batch_size": 256,
                   "options": {"rewards": "dpokit.tasks.directions:mix_rewards", "objectives": list(OBJECTIVES),
                               "angles": list(s.train_angles)}},
    }
    log(f"[2/3] {s.rounds} dpa_rsf rounds: {s.prompts_per_round} prompts x {s.samples_per_prompt} samples, "
        f"directions on [{s.train_angles[0]:g}, {s.train_angles[1]:g}] degrees")
    result = OnlineLoop(from_dict(raw), log=lambda *_: None).run()
    aligned = AutoModelForCausalLM.from_pretrained(result["final"], use_safetensors=True)
    log("[3/3] evaluating each direction on held-out prompts")
    after = evaluate_angles(aligned, tokenizer, eval_prompts, s.eval_angles, s.eval_samples, s.seed + 2)
    rps = {}
    rewards = checked_rewards(mix_rewards, "mix_rewards", 2)
    for a in s.rps_angles:
        config = SamplingConfig(max_new_tokens=LENGTH + 2, seed=s.seed + 3, top_k=0, batch_size=256)
        res = rps_compare(aligned, tokenizer, eval_prompts, a, rewards, OBJECTIVES, s.rps_k, s.rps_delta, config)
        rps[f"{a:g}"] = {k: v for k, v in res.items() if not k.endswith("_values")}
    summary = {"task": "directions", "settings": asdict(s), "before": before, "after": after, "rps": rps,
               "per_round": result["metrics"], "seconds": round(time.time() - started, 1)}
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    for a in s.eval_angles:
        b, f = before[f"{a:g}"], after[f"{a:g}"]
        log(f"   theta {a:4g}: asked y-share {math.sin(math.radians(a)) ** 2:.2f}, before {b['y_share']:.2f}, "
            f"after {f['y_share']:.2f} (angle of mean r {f['angle']:.1f})")
    return summary
