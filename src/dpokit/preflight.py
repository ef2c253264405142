"""Checks that span modules, run once after the config is parsed and before any model loads.

:mod:`dpokit.config` checks each section on its own and imports nothing else of dpokit. What needs
a registry lives here: the loss (name, hyperparameter ranges, what it trains on and whether it has
a reference), the layout, the curriculum settings, the online strategy and the machine (fp16 needs
a GPU). The command line, :class:`dpokit.train.Trainer` and :class:`dpokit.online.loop.OnlineLoop`
call :func:`check_run`; a mistake ends here as a :class:`~dpokit.errors.ConfigError` naming the key.

    plan = check_run(config)                   # RunPlan(loss, needs)
    config = checked_config("run.yaml")        # parse (a path or a dict) and check everything
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence, Union

from .config import Config, from_dict, load_config
from .data.build import curriculum_settings
from .distributed import resolve_mixed_precision
from .errors import ConfigError
from .families import model_family
from .losses import build_loss
from .losses.checks import check_loss
from .online.catalog import STRATEGIES, check_options
from .online.data_loops import data_loop
from .preference.judges import JUDGES
from .reference_fusion import check_fused
from .scoring import check_scorer
from .scoring.lm.layouts import LAYOUTS


@dataclass
class RunPlan:
    """What the checks resolved: the built loss (ready to train with) and its needs."""

    loss: Any
    needs: Any
    loop: Any = None  # a loop of dpokit.online.data_loops that trains this data instead of the trainer


def check_run(config: Config) -> RunPlan:
    """Every check that needs more than the config itself; returns what it built on the way."""
    t = config.train
    if t.layout not in LAYOUTS:
        raise ConfigError(f"train.layout: {t.layout!r} is not one of {', '.join(sorted(LAYOUTS))}")
    resolve_mixed_precision(t.mixed_precision)  # fp16 without a GPU fails here
    loss = checked_loss(config.loss)
    loop = data_loop(config)  # data the trainer does not read (data.kind expert): a loop of its own
    if loop is not None:
        loop.check(config, loss)
        return RunPlan(loss=loss, needs=loss.needs, loop=loop)
    _check_data_kind(config, loss)
    try:  # the scorer kind and what it can serve (scorer registry, dpokit.scoring)
        check_scorer(config, loss.needs)
    except ValueError as err:
        raise ConfigError(f"train.scorer: {err}") from None
    _check_reference(config, loss)
    _check_curriculum(config, loss)
    model_family(config.model.kind).check(config)  # model paths: dpokit.families
    _check_vision(config, loss)
    if config.online.strategy:
        _check_online(config)
    return RunPlan(loss=loss, needs=loss.needs)


def checked_config(source: Union[str, Dict[str, Any]], overrides: Sequence[str] = ()) -> Config:
    """A config from a YAML path or a mapping, with ``--set``-style overrides, checked completely."""
    if isinstance(source, dict):
        config = from_dict(source, overrides)
        check_run(config)
        return config
    config = load_config(source, overrides)
    try:
        check_run(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def checked_loss(section, where: str = "loss"):
    """The loss of a ``loss:`` section, its name and hyperparameters checked (still without a model)."""
    try:
        loss = build_loss(section)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err.args[0] if err.args else err}") from None
    try:  # hyperparameter ranges and types (see losses.checks)
        check_loss(loss)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return loss


def _check_data_kind(config: Config, loss) -> None:
    d, needs = config.data, loss.needs
    group = STRATEGIES.get(config.online.strategy) if config.online.strategy else None
    if group is not None and group.group_strategy:  # the rounds write the groups as lists themselves
        return
    if needs.data != d.kind and not (needs.data == "unpaired" and d.kind == "pairs") and d.kind != "lists":
        hint = " (set data.kind: lists; pair records are read as two-response lists)" if needs.data == "lists" else ""
        raise ConfigError(f"loss {loss.name!r} trains on {needs.data} data but data.kind is {d.kind!r}{hint}")


def _check_reference(config: Config, loss) -> None:
    r, needs = config.reference, loss.needs
    if not needs.reference and r.kind not in ("auto", "none"):
        raise ConfigError(f"reference.kind: loss {loss.name!r} is reference-free; remove the reference "
                          f"(kind: none) instead of {r.kind!r}")
    if not needs.reference:
        for key, value in (("path", r.path), ("precompute", r.precompute), ("sync_every", r.sync_every)):
            if value:
                raise ConfigError(f"reference.{key}: loss {loss.name!r} is reference-free, so reference.{key} "
                                  "would be ignored; remove it")
    if needs.reference and r.kind == "none":
        raise ConfigError(f"loss {loss.name!r} needs a reference model; reference.kind cannot be 'none'")
    check_fused(config, loss)  # reference.kind: fused (dpokit.reference_fusion)
    if r.precompute and "ref_kl" in needs.token_stats:
        raise ConfigError(f"reference.precompute cannot serve loss {loss.name!r}: it needs the reference "
                          "model's full next-token distributions (per-token KL), not cached log-probs")


def _check_curriculum(config: Config, loss) -> None:
    d, r, needs = config.data, config.reference, loss.needs
    try:
        curriculum = curriculum_settings(d.curriculum)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not curriculum:
        return
    if needs.data != "pairs" or not needs.reference:
        raise ConfigError(f"data.curriculum: needs a pairwise loss with a reference model; {loss.name!r} "
                          f"trains on {needs.data}" + ("" if needs.reference else " without a reference"))
    if r.precompute or r.kind in ("lora_disabled", "none") or (r.kind == "auto" and config.lora.enabled):
        raise ConfigError("data.curriculum: replaces the reference model by the policy at each stage, which "
                          "needs a separate reference model (reference.kind copy or path, no precompute, "
                          "not lora_disabled)")


def _check_vision(config: Config, loss) -> None:
    """``model.kind: vlm``: what the vision-language path does not (yet) serve."""
    if config.model.kind != "vlm":
        return
    served = config.data.kind in ("pairs", "unpaired") and loss.needs.data in ("pairs", "unpaired")
    if not served and not (config.data.kind == "lists" and loss.needs.data == "lists"):
        raise ConfigError(f"model.kind: vlm trains on pairs, unpaired data or (a listwise loss) lists; loss "
                          f"{loss.name!r} with data.kind {config.data.kind!r} is not served yet (pairs built from "
                          "lists would lose their images)")
    if loss.needs.prompt_logps:
        raise ConfigError(f"model.kind: vlm: loss {loss.name!r} reads the prompt's own log-probs, which are not "
                          "defined at image positions")
    if config.online.strategy:
        raise ConfigError("online.strategy: online rounds sample text only; not supported with model.kind: vlm")


# ---- online rounds -----------------------------------------------------------------------------
SAMPLERS = ("hf", "vllm")
PAIR_MODES = ("best_vs_worst", "best_vs_each", "all_pairs")


GROUP_FAMILIES = ("policy_gradient", "process_reward")


def _check_group_loss(config: Config, cls) -> None:
    """A policy-gradient loss needs a group strategy (a pairwise one would train it on deduplicated,
    tie-free lists); a group strategy refuses any loss but its own (in its ``loss_section``)."""
    from .online.groups import loss_family, loss_name_of

    family = loss_family(config.loss)
    if family in GROUP_FAMILIES and not cls.group_strategy:
        name = loss_name_of(config.loss)
        groups = sorted(n for n, c in STRATEGIES.items() if c.group_strategy)
        raise ConfigError(f"loss {name!r} is a {family.replace('_', '-')} loss: it trains on groups of K samples "
                          f"per prompt, which strategy {config.online.strategy!r} (pairwise) does not build; set "
                          f"online.strategy to a group strategy ({', '.join(groups)})")


def _check_online(config: Config):
    """Checks of ``online:`` (strategy, its options, sampler, judge, the loss it trains with)."""
    o = config.online
    cls = STRATEGIES.get(o.strategy)
    if cls is None:
        raise ConfigError(f"online.strategy: {o.strategy!r} is not one of {', '.join(sorted(STRATEGIES))}")
    for path, value, low in (("online.rounds", o.rounds, 1), ("online.generation_batch_size", o.generation_batch_size, 1),
                             ("online.max_new_tokens", o.max_new_tokens, 1),
                             ("online.eval_samples_per_prompt", o.eval_samples_per_prompt, 1),
                             ("online.samples_per_prompt", o.samples_per_prompt, cls.min_samples),
                             ("online.refresh_every", o.refresh_every, 0)):
        if value < low:
            raise ConfigError(f"{path}: must be >= {low} for strategy {o.strategy!r}, got {value}")
    if o.prompts_per_round is not None and o.prompts_per_round < 1:
        raise ConfigError(f"online.prompts_per_round: must be >= 1, got {o.prompts_per_round}")
    if o.sampler not in SAMPLERS:
        raise ConfigError(f"online.sampler: {o.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if o.pairs not in PAIR_MODES:
        raise ConfigError(f"online.pairs: {o.pairs!r} is not one of {', '.join(PAIR_MODES)}")
    if o.temperature < 0 or not 0.0 < o.top_p <= 1.0:
        raise ConfigError("online.temperature must be >= 0 and online.top_p in (0, 1]")
    if o.min_margin < 0:
        raise ConfigError(f"online.min_margin: must be >= 0, got {o.min_margin}")
    check_options(cls, o.options)
    if cls.needs_judge:
        spec = o.judge
        if spec is None:
            raise ConfigError(f"online.judge: strategy {o.strategy!r} needs a judge, e.g. "
                              "{kind: callable, function: 'module:function'} or {kind: reward_model, path: ...}")
        if isinstance(spec, dict) and spec.get("kind") not in JUDGES:
            raise ConfigError(f"online.judge.kind: {spec.get('kind')!r} is not one of {', '.join(sorted(JUDGES))}")
        if not isinstance(spec, (dict, str)):
            raise ConfigError("online.judge: expected a mapping with 'kind' (or 'module:function')")
    if cls.offline_pairs and not config.data.train:
        raise ConfigError(f"online.strategy {o.strategy!r} trains on the offline pairs of data.train; set data.train")
    if o.refresh_every and cls.reference != "initial":
        raise ConfigError(f"online.refresh_every: refreshing pairs within a round needs a frozen reference; "
                          f"strategy {o.strategy!r} uses the previous iterate (use more rounds instead)")
    if o.refresh_every and not cls.refreshable:
        raise ConfigError(f"online.refresh_every is not available with strategy {o.strategy!r}")
    if config.reference.precompute:
        raise ConfigError("reference.precompute: online rounds score new samples each round, so reference "
                          "log-probs cannot be cached; remove it")
    _check_group_loss(config, cls)
    loss = checked_loss(cls.loss_section(config.loss, o.options), f"loss (strategy {o.strategy!r})")
    if loss.needs.data == "lists" and (not cls.lists_ok or o.refresh_every):
        raise ConfigError(f"loss {loss.name!r} trains on ranked lists, which strategy {o.strategy!r} does not build"
                          + (" with online.refresh_every" if cls.lists_ok else ""))
    kinds = getattr(cls, "row_kinds", ("pairs", "lists"))  # what the strategy's rows() builds
    if loss.needs.data not in kinds:
        raise ConfigError(f"online strategy {o.strategy!r} builds {' or '.join(kinds)}; loss {loss.name!r} trains on "
                          f"{loss.needs.data}")
    return cls
