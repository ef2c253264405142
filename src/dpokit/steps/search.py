"""MCTS-DPO's tree search (Xie et al. 2024, arXiv 2405.00451), as its official code runs it.

State: the question and the steps so far. Action: one step sampled from the policy (up to a
separator or EOS). Node statistics: visits ``N``, value ``V``, action value ``Q``, step reward ``r``,
the evaluation score ``v`` and the prior ``p``.

* **Prior.** ``p = exp(sum_t log pi(a_t|s) / |a|^lambda)``, ``lambda = length_penalty = 1.25``, under the
  policy at expansion time.
* **Selection (PUCT).** child = ``argmax Q + w_exp * p * sqrt(N_parent) / (1 + N)``.
* **Evaluation of a new child.** ``conf`` = the evaluator's probability that the path is heading
  the right way (:class:`SelfEvaluator`: the policy itself under the hinted prompt, the method; a
  programmatic step checker is an ablation). ``score = conf / max(depth_parent - 3, 1)``, and
  ``score = v(parent)`` where that is 0. At a terminal step (EOS) the outcome is validated:
  ``correct = +1`` when the answer is right, else ``-1``; a right answer off the gold solution's
  prefix counts ``5/4``; ``score += correct``. Then ``v = score``, ``r = v - v(parent)``,
  ``Q = V(parent) + r``.
* **Backup** (``gamma = 1``). The leaf: ``Q <- r + gamma V``, ``N += 1``; each ancestor:
  ``V <- sum_c max(1, N_c) Q_c / sum_c max(1, N_c)``, ``N += 1``, ``Q <- r + gamma V``.
* **Tree per question.** From the root: ``n_iters`` iterations (``4 * n_iters`` at the root) of
  select / expand (``n_init_actions`` at depth 0, else ``n_actions``; at ``depth_limit`` one forced
  completion to the end; with ``include_gold`` the rest of the gold solution joins the candidates
  where the prefix follows it) / evaluate / backup; then move to the child maximising
  ``N_c * (diversity_c + 1)`` (ties by ``Q_c``, then ``V_c``; ``diversity_c`` = max minus min visits
  among ``c``'s children), keep the tree, repeat until a terminal node.
* **Pairs.** At every node of the chosen path with two or more children: each child's completion is
  its step plus its chain of single-child descendants; children sorted by ``(Q, p, r, v, N)``;
  chosen = the first, rejected = a random other one; at most ``max_pairs`` (8) per tree. The visit
  counts go with each pair (``chosen_visits``, ``rejected_visits``) for ``step_dpo(conservative=True)``.
  ``filter_correct`` (the released scripts' ``--filter``) keeps a tree's pairs only when its chosen
  path ends with a right answer.

``[partial]`` where this differs from or goes beyond what was read of the official code:

* near-duplicate children are merged when their step texts are identical; the official code drops
  candidates whose embedding similarity to a kept one exceeds 0.99 (``[partial]``);
* :class:`SelfEvaluator` reads the "correct" probability at the first answer position; the official
  code decodes up to 4 tokens greedily and reads it at the first token that is an answer word
  (``[partial]``);
* for multiple-choice questions the official code halves ``correct`` at shallow depth; there are no
  multiple-choice tasks here, so that rule is not implemented (``[partial]``);
* the leaf of a backup keeps the ``V`` it has (0 until it is an ancestor in a later backup), as the
  backup rule reads; whether the official code also sets it from the newly expanded children was
  not established (``[partial]``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from ..data.steps import StepPair
from .expand import Candidate, StepSampler, length_normalised_prior, split_ids

HINTED_EVAL_PROMPT = ("{question} EXAMPLE ANSWER: {gold} PROPOSED SOLUTION: {solution} QUESTION: Evaluate if the "
                      "proposed solution is logically heading in the correct direction based on the example answer. "
                      "Answer Choices: (A) incorrect (B) correct ANSWER: The answer is")


@dataclass
class SearchConfig:
    n_iters: int = 8
    root_iters_factor: int = 4
    n_init_actions: int = 2
    n_actions: int = 2
    breadth_limit: int = 4
    depth_limit: int = 6
    w_exp: float = 1.0
    length_penalty: float = 1.25
    gamma: float = 1.0
    off_gold_bonus: float = 1.25
    include_gold: bool = False
    force_terminating_on_depth_limit: bool = True
    max_completion_tokens: int = 64
    max_pairs: int = 8
    filter_correct: bool = True
    seed: int = 0


@dataclass
class Node:
    steps: List[str]  # the step (or, for a forced completion or gold rest, the steps) this node adds
    ids: List[int]
    parent: Optional["Node"] = None
    depth: int = 0
    prior: float = 1.0
    terminal: bool = False
    outcome: Optional[bool] = None
    N: int = 0
    V: float = 0.0
    Q: float = 0.0
    r: float = 0.0
    v: float = 0.0
    children: List["Node"] = field(default_factory=list)

    def path_steps(self) -> List[str]:
        out: List[str] = []
        node = self
        while node is not None:
            out = node.steps + out
            node = node.parent
        return out

    def prefix_ids(self) -> List[int]:
        out: List[int] = []
        node = self
        while node is not None:
            out = node.ids + out
            node = node.parent
        return out


# ---- the rules --------------------------------------------------------------------------------

def puct_score(parent: Node, child: Node, w_exp: float) -> float:
    return child.Q + w_exp * child.prior * math.sqrt(parent.N) / (1 + child.N)


def select_child(node: Node, w_exp: float) -> Node:
    """PUCT choice (the first of equal scores)."""
    return max(node.children, key=lambda c: puct_score(node, c, w_exp))


def back_propagate(path: Sequence[Node], gamma: float = 1.0) -> None:
    """The backup rule on ``path`` (root first, leaf last)."""
    leaf = path[-1]
    leaf.Q = leaf.r + gamma * leaf.V
    leaf.N += 1
    for node in reversed(path[:-1]):
        weights = [max(1, c.N) for c in node.children]
        node.V = sum(w * c.Q for w, c in zip(weights, node.children)) / sum(weights)
        node.N += 1
        node.Q = node.r + gamma * node.V


def child_value(parent: Node, child: Node, conf: float, follows_gold: bool, off_gold_bonus: float = 1.25) -> None:
    """Set ``v``, ``r`` and the initial ``Q`` of a new child from the evaluator's ``conf`` and, at a
    terminal step, the outcome."""
    score = conf / max(parent.depth - 3, 1)
    if score == 0:
        score = parent.v
    if child.terminal:
        correct = 1.0 if child.outcome else -1.0
        if child.outcome and not follows_gold:
            correct *= off_gold_bonus
        score += correct
    child.v = score
    child.r = child.v - parent.v
    child.Q = parent.V + child.r


def next_node(node: Node) -> Node:
    """The child the tree moves to (``mcts_temperature = 0``)."""

    def diversity(c: Node) -> int:
        return (max(g.N for g in c.children) - min(g.N for g in c.children)) if c.children else 0

    return max(node.children, key=lambda c: (c.N * (diversity(c) + 1), c.Q, c.V))


def completion_of(child: Node) -> List[Node]:
    """The child and its chain of single-child descendants."""
    chain = [child]
    while len(chain[-1].children) == 1:
        chain.append(chain[-1].children[0])
    return chain


# ---- evaluation -----------------------------------------------------------------------------------

class SelfEvaluator:
    """The policy's own probability that a partial solution is right, under the hinted prompt
    (:data:`HINTED_EVAL_PROMPT` by default): the summed next-token probability of ``correct_ids``."""

    def __init__(self, model, tokenizer, correct_words: Sequence[str] = ("B", "(B", " B", "correct", "Correct"),
                 template: str = HINTED_EVAL_PROMPT):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        vocab = tokenizer.get_vocab()
        self.correct_ids = sorted({vocab[w] for w in correct_words if w in vocab})
        if not self.correct_ids:
            raise ValueError("none of the 'correct' answer words is a token of the tokenizer")

    @torch.no_grad()
    def __call__(self, question: str, gold: str, solution: str) -> float:
        text = self.template.format(question=question, gold=gold, solution=solution)
        ids = torch.tensor([self.tokenizer(text)["input_ids"]], device=next(self.model.parameters()).device)
        probs = torch.softmax(self.model(input_ids=ids, use_cache=False).logits[0, -1].float(), -1)
        return float(probs[self.correct_ids].sum())


# ---- the search -----------------------------------------------------------------------------------

@dataclass
class SearchTask:
    """What the search needs of a task: ``evaluate(prompt, steps) -> conf`` in [0, 1];
    ``outcome(prompt, steps) -> bool`` (answer right) for a terminal path; ``gold(prompt)`` the gold
    steps (or None); ``decode(ids) -> step text``."""

    evaluate: Callable[[str, List[str]], float]
    outcome: Callable[[str, List[str]], bool]
    decode: Callable[[List[int]], str]
    gold: Optional[Callable[[str], Optional[List[str]]]] = None


@dataclass
class Tree:
    prompt: str
    root: Node
    path: List[Node]

    @property
    def correct(self) -> bool:
        return bool(self.path) and self.path[-1].terminal and bool(self.path[-1].outcome)


class MCTS:
    def __init__(self, sampler: StepSampler, task: SearchTask, tokenizer, config: SearchConfig = SearchConfig()):
        self.sampler, self.task, self.tokenizer, self.config = sampler, task, tokenizer, config
        self.rng = random.Random(config.seed)

    # -- expansion -------------------------------------------------------------------------------
    def _node(self, parent: Node, ids: List[int], logp: float, final: bool, prompt: str) -> Node:
        steps = [self.task.decode(piece) for piece in split_ids(ids, self.sampler.separator_ids)]
        steps = [s for s in steps if s] or [""]
        node = Node(steps, list(ids), parent, parent.depth + 1,
                    length_normalised_prior(logp, len(ids), self.config.length_penalty), terminal=final)
        if final:
            node.outcome = bool(self.task.outcome(prompt, node.path_steps()))
        return node

    def _follows_gold(self, prompt: str, steps: List[str]) -> bool:
        gold = self.task.gold(prompt) if self.task.gold else None
        return gold is not None and steps == gold[:len(steps)]

    def expand(self, node: Node, prompt: str) -> None:
        cfg = self.config
        prefix = node.prefix_ids()
        if node.depth >= cfg.depth_limit and cfg.force_terminating_on_depth_limit:
            candidates = self.sampler.sample(prefix, 1, to_end=True, max_tokens=cfg.max_completion_tokens)
        else:
            candidates = self.sampler.sample(prefix, cfg.n_init_actions if node.depth == 0 else cfg.n_actions)
        gold = self.task.gold(prompt) if (cfg.include_gold and self.task.gold) else None
        path = node.path_steps()
        if gold is not None and path == gold[:len(path)] and len(path) < len(gold):
            rest = self._gold_ids(gold[len(path):])
            candidates.append(Candidate(rest, self.sampler.score(prefix, rest), True))
        seen = set()
        for cand in candidates:
            key = tuple(cand.ids)
            if not cand.ids or key in seen or len(node.children) >= cfg.breadth_limit:
                continue
            seen.add(key)
            child = self._node(node, cand.ids, cand.logp, cand.final, prompt)
            steps = child.path_steps()
            conf = float(self.task.evaluate(prompt, steps))
            child_value(node, child, conf, self._follows_gold(prompt, steps), cfg.off_gold_bonus)
            node.children.append(child)

    def _gold_ids(self, steps: List[str]) -> List[int]:
        from ..data.steps import steps_text

        separator = self.tokenizer.convert_ids_to_tokens(self.sampler.separator_ids[0])
        ids = self.tokenizer(steps_text(steps, separator, final=True), add_special_tokens=False)["input_ids"]
        return ids + [self.sampler.eos_id]

    # -- iterations ------------------------------------------------------------------------------
    def iterate(self, start: Node, prompt: str) -> None:
        path = [start]
        node = start
        while node.children and not node.terminal:
            node = select_child(node, self.config.w_exp)
            path.append(node)
        if not node.terminal:
            self.expand(node, prompt)
        back_propagate(path, self.config.gamma)

    def search(self, prompt: str) -> Tree:
        cfg = self.config
        root = Node([], self.tokenizer(prompt)["input_ids"])
        node, path = root, [root]
        while not node.terminal:
            iterations = cfg.n_iters * (cfg.root_iters_factor if node is root else 1)
            for _ in range(iterations):
                self.iterate(node, prompt)
            if not node.children:
                break
            node = next_node(node)
            path.append(node)
        return Tree(prompt, root, path)

    # -- pairs -----------------------------------------------------------------------------------
    def pairs(self, tree: Tree) -> List[StepPair]:
        cfg = self.config
        if cfg.filter_correct and not tree.correct:
            return []
        out: List[StepPair] = []
        for node in tree.path:
            if len(node.children) < 2:
                continue
            ranked = sorted(node.children, key=lambda c: (c.Q, c.prior, c.r, c.v, c.N), reverse=True)
            chosen = ranked[0]
            rejected = self.rng.choice(ranked[1:])
            cw, cl = completion_of(chosen), completion_of(rejected)
            pair = StepPair(tree.prompt, node.path_steps(), [s for n in cw for s in n.steps],
                            [s for n in cl for s in n.steps], cw[-1].terminal, cl[-1].terminal,
                            {"chosen_visits": float(chosen.N), "rejected_visits": float(rejected.N)})
            if pair.chosen != pair.rejected or pair.chosen_final != pair.rejected_final:
                out.append(pair)
            if len(out) >= cfg.max_pairs:
                break
        return out
