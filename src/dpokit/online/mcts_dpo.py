"""MCTS-DPO rounds (Xie et al. 2024, arXiv 2405.00451): each round searches from the current policy
and trains step-level DPO on the pairs of the trees.

    prompts  <- the round's slice of the prompt pool (as every strategy)
    trees    <- MCTS from the current policy on each prompt (:class:`dpokit.steps.search.MCTS`: PUCT with the
                length-normalised step prior, backup, outcome validation plus the step evaluator)
    pairs    <- at every node of each chosen path with two or more children: the highest-Q child against
                a random sibling, with their visit counts (``--filter``: trees whose chosen path ends
                right)                                                             rounds/round-r/{pairs,train}.jsonl
    train    <- step-level DPO (``loss.name: step_dpo``; ``conservative: true`` is the released scripts'
                visit-count smoothing) through the step scorer, against the reference

**Reference.** The official code fixes the reference to the initial SFT checkpoint
(``actor_ref_model_name_or_path`` of ``mcts_rl/algorithms/mcts/main.py``), so ``online.options.reference`` defaults to
``initial``; ``previous`` (a frozen copy of the policy each round starts from) is the alternative
some iterative-DPO papers use. The search always runs from the live policy (the official loop is
on-policy at every step; here it is on-policy at every round: the policy is fixed while a round searches).

**The task** (``online.options.task``): a ``module:function`` returning an object with
``outcome(prompt, steps) -> bool`` (the final answer is right), ``gold(prompt) -> steps or None``,
``separator`` (the text that ends a step) and, for ``evaluator: verifier``, ``check(prompt, steps) ->
float in [0, 1]``; the arithmetic task's is ``dpokit.tasks.arithmetic:search_task``. ``evaluator:
self`` (default, the method) is the policy's own hinted self-evaluation
(:class:`dpokit.steps.search.SelfEvaluator`); ``verifier`` is the programmatic-checker ablation.

``[partial]``: the official loop takes one optimizer step per tree while searching (search and
update interleave); here a round searches all its prompts with the round's starting policy, then
trains on the round's pairs (``train.epochs`` passes). What the search itself leaves out is listed
in :mod:`dpokit.steps.search`.
"""

from __future__ import annotations

from typing import Any, Dict

from ..errors import ConfigError
from ..losses import resolve_name
from ..losses.registry import get_spec
from ..scoring.steps import StepScorer, separator_ids
from ..steps.search import SearchConfig
from .groups import load_function
from .strategies import RoundStrategy, register_strategy

SEARCH_OPTIONS = ("n_iters", "root_iters_factor", "n_init_actions", "n_actions", "breadth_limit", "depth_limit",
                  "w_exp", "length_penalty", "include_gold", "max_completion_tokens", "max_pairs", "filter_correct")
REFERENCES = ("initial", "previous")
EVALUATORS = ("self", "verifier")


@register_strategy("mcts_dpo")
class MCTSDPORound(RoundStrategy):
    """MCTS-DPO (Xie et al. 2024, arXiv 2405.00451; official code): per round, tree search from the
    current policy on the round's prompts, step pairs from the trees, ``step_dpo`` against the
    reference (``reference``: ``initial``, the official default, or ``previous``). Options: ``task``
    (required), ``evaluator`` (``self`` | ``verifier``), ``max_step_tokens`` 16, ``temperature`` 1.0,
    and the search's (:class:`dpokit.steps.search.SearchConfig`; defaults the miniature's:
    ``n_iters`` 8, ``root_iters_factor`` 4, ``n_init_actions`` 2, ``n_actions`` 2, ``breadth_limit`` 4,
    ``depth_limit`` 6, ``w_exp`` 1.0, ``length_penalty`` 1.25, ``include_gold`` true (the released
    ``include_gt``),
    ``max_completion_tokens`` 64, ``max_pairs`` 8, ``filter_correct`` true)."""

    sources = ()  # nothing is sampled by the loop: the search generates
    needs_judge = False  # the task validates outcomes
    refreshable = False
    lists_ok = False
    min_samples = 1
    verified = "partial"  # the search and the pairs as the official code; one update per round, not per tree
    source = "Xie et al. 2024, arXiv 2405.00451 (official code YuxiXie/MCTS-DPO)"
    OPTIONS = {"task": None, "reference": "initial", "evaluator": "self", "max_step_tokens": 16,
               "temperature": 1.0, **{k: getattr(SearchConfig(), k) for k in SEARCH_OPTIONS},
               "include_gold": True}  # the released include_gt default

    def __init__(self, loop, options):
        super().__init__(loop, options)
        self.reference = self.opts["reference"]  # read by the loop (instance attribute over the class default)
        self.task = load_function(self.opts["task"], "online.options.task")()
        self.separator_ids = separator_ids(loop.tokenizer, self.task.separator)
        self.stats: Dict[str, Any] = {}
        if self.opts["evaluator"] == "self":
            try:
                self.evaluator()
            except ValueError as err:
                raise ConfigError(f"online.options.evaluator: 'self' (the policy's hinted self-evaluation) cannot run "
                                  f"with this tokenizer ({err}); use evaluator: verifier (the checker ablation)") from None

    @classmethod
    def validate_options(cls, options):
        if not options.get("task"):
            raise ConfigError("online.options.task: strategy 'mcts_dpo' needs the task whose outcomes the search "
                              "validates, a 'module:function' (e.g. dpokit.tasks.arithmetic:search_task)")
        load_function(options["task"], "online.options.task")
        if options.get("reference", "initial") not in REFERENCES:
            raise ConfigError(f"online.options.reference: one of {', '.join(REFERENCES)}, got {options['reference']!r}")
        if options.get("evaluator", "self") not in EVALUATORS:
            raise ConfigError(f"online.options.evaluator: one of {', '.join(EVALUATORS)}, got {options['evaluator']!r}")

    @classmethod
    def loss_section(cls, base, options):
        name = base.get("name", "dpo") if isinstance(base, dict) else base
        try:
            family = get_spec(resolve_name(name)).family if isinstance(name, str) else None
        except (KeyError, ValueError):
            family = None
        if family != "step_level":
            raise ConfigError(f"online.strategy 'mcts_dpo' trains step pairs with a step-level loss, not loss "
                              f"{name!r}; set loss.name: step_dpo (conservative: true for the released "
                              "visit-count smoothing)")
        return dict(base)

    # -- the round ---------------------------------------------------------------------------------
    def search_config(self, r: int) -> SearchConfig:
        return SearchConfig(**{k: self.opts[k] for k in SEARCH_OPTIONS}, seed=self.loop.config.train.seed + 7919 * r)

    def evaluator(self):
        if self.opts["evaluator"] == "verifier":
            return lambda prompt, steps: float(self.task.check(prompt, steps))
        from ..steps.search import SelfEvaluator

        judge = SelfEvaluator(self.loop.policy, self.loop.tokenizer)
        sep = f" {self.task.separator} "
        return lambda prompt, steps: judge(prompt, sep.join(self.task.gold(prompt) or []), sep.join(steps))

    def rows(self, groups, r):
        from ..data.step_pairs import pair_records
        from ..steps.expand import StepSampler
        from ..steps.search import MCTS, SearchTask

        tok, sep = self.loop.tokenizer, self.separator_ids
        config = self.search_config(r)
        sampler = StepSampler(self.loop.policy, sep, tok.eos_token_id, max_step_tokens=int(self.opts["max_step_tokens"]),
                              temperature=float(self.opts["temperature"]), seed=config.seed)
        decode = lambda ids: tok.decode([i for i in ids if i not in sep], skip_special_tokens=True).strip()  # noqa: E731
        task = SearchTask(evaluate=self.evaluator(), outcome=lambda p, s: bool(self.task.outcome(p, s)),
                          decode=decode, gold=self.task.gold)
        search = MCTS(sampler, task, tok, config)
        was = self.loop.policy.training
        train, info, correct, depths = [], [], 0, {}
        try:
            for group in groups:
                if not isinstance(group.prompt, str):
                    raise ConfigError(f"online.strategy 'mcts_dpo': prompt {group.index} is not plain text (message "
                                      "lists are not supported by the search)")
                tree = search.search(group.prompt)
                correct += tree.correct
                pairs = search.pairs(tree)
                for pair, row in zip(pairs, pair_records(pairs, tok, self.task.separator)):
                    depth = len(pair.prefix_steps)
                    depths[depth] = depths.get(depth, 0) + 1
                    train.append(row)
                    info.append({"round": r, "prompt_index": group.index, **pair.as_record(), "depth": depth,
                                 "tree_correct": tree.correct})
        finally:
            self.loop.policy.train(was)
        s = sampler.stats
        self.stats = {"search/trees": len(groups), "search/correct_trees": correct / max(1, len(groups)),
                      "search/expansions": s.expansions, "search/generated_tokens": s.generated_tokens,
                      "search/step_pairs": len(train),
                      **{f"search/pairs_depth_{d}": n for d, n in sorted(depths.items())}}
        if train:
            eps = [min(1 - 1 / (1 + row["rejected_visits"] / max(1.0, row["chosen_visits"])), 0.5) for row in train]
            self.stats["search/eps_mean"] = sum(eps) / len(eps)
        return train, info

    def trainer_options(self, train_rows, groups) -> Dict[str, Any]:
        if self.loop.config.train.scorer == "steps":
            return {}
        return {"scorer_wrapper": lambda scorer: StepScorer(scorer, self.separator_ids)}

    def round_metrics(self):
        return dict(self.stats)

