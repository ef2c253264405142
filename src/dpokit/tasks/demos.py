"""The built-in demos of `dpokit demo`, by name: one launcher each, picked from the command line.

A launcher takes the parsed arguments, the loss hyperparameters and the output directory, and
returns the exit status. `pick_demo` names the demo the arguments ask for: ``--modality`` first
(diffusion, vlm), then ``--task`` (arithmetic has its own demo; parity and graded share the text
demo). A new demo registers a launcher here and needs no change to the command line's dispatcher.
"""

import sys
from dataclasses import dataclass
from typing import Callable, Dict

_ONLINE_TEXT_ONLY = "--online runs the parity task only (drop --task or --online)"


@dataclass(frozen=True)
class Demo:
    run: Callable[..., int]
    output_dir: str  # where it writes when --output-dir is left at its default


DEMOS: Dict[str, Demo] = {}


def register_demo(name: str, output_dir: str) -> Callable:
    def decorator(run: Callable[..., int]) -> Callable[..., int]:
        DEMOS[name] = Demo(run=run, output_dir=output_dir)
        return run

    return decorator


def pick_demo(args) -> str:
    """The demo's name: a non-text modality names its demo; for text, a task with its own demo names it."""
    if args.modality != "text":
        return args.modality
    return args.task if args.task in DEMOS else "text"


def run_demo_command(args, hparams: dict, default_output_dir: str) -> int:
    demo = DEMOS[pick_demo(args)]
    output_dir = args.output_dir if args.output_dir != default_output_dir else demo.output_dir
    return demo.run(args, hparams, output_dir)


def _refuse(message: str) -> int:
    print(f"dpokit demo: error: {message}", file=sys.stderr)
    return 2


@register_demo("diffusion", "runs/demo-diffusion")
def _diffusion(args, hparams: dict, output_dir: str) -> int:
    """Diffusion-DPO on the bimodal image task (dpokit.tasks.diffusion_demo)."""
    from .diffusion_demo import DiffusionDemoSettings, run_diffusion_demo

    settings = DiffusionDemoSettings(output_dir=output_dir, loss=args.loss, loss_hparams=hparams,
                                     seed=args.seed, prefer=args.prefer)
    if args.quick:
        settings.pretrain_steps, settings.samples_per_class, settings.dpo_epochs = 60, 32, 1
        settings.eval_per_class, settings.sample_steps = 16, 5
        settings.dro_steps, settings.experts_per_class = 8, 8
    run_diffusion_demo(settings)
    return 0


@register_demo("arithmetic", "runs/demo-arithmetic")
def _arithmetic(args, hparams: dict, output_dir: str) -> int:
    """Step-level vs outcome-level preferences on checkable arithmetic (dpokit.tasks.arithmetic_demo)."""
    from .arithmetic_demo import ArithmeticDemoSettings, run_arithmetic_demo

    if args.online:
        return _refuse(_ONLINE_TEXT_ONLY)
    settings = ArithmeticDemoSettings(output_dir=output_dir, method=args.method, pairs=args.pairs, seed=args.seed)
    if args.quick:
        settings.n_train_problems, settings.n_eval_problems, settings.warmup_steps = 200, 60, 200
        settings.epochs, settings.search_problems = 1, 10
    run_arithmetic_demo(settings)
    return 0


@register_demo("vlm", "runs/demo-vlm")
def _vlm(args, hparams: dict, output_dir: str) -> int:
    """DPO on a tiny vision-language model, the colour task (dpokit.tasks.vlm_demo)."""
    from .vlm_demo import VLMDemoSettings, run_vlm_demo

    settings = VLMDemoSettings(output_dir=output_dir, loss=args.loss, loss_hparams=hparams, seed=args.seed)
    if args.quick:
        settings.n_train, settings.n_eval, settings.warmup_steps, settings.dpo_epochs = 64, 32, 40, 1
    run_vlm_demo(settings)
    return 0


@register_demo("text", "runs/demo")
def _text(args, hparams: dict, output_dir: str) -> int:
    """The parity (or graded) task on a tiny Llama, offline or in online rounds (dpokit.tasks.demo)."""
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(output_dir=output_dir, loss=args.loss, loss_hparams=hparams, seed=args.seed,
                            task=args.task, label_noise=args.label_noise)
    if args.quick:
        settings.n_train_prompts, settings.n_eval_prompts = 200, 60
        settings.warmup_steps, settings.dpo_epochs = 120, 2
    if args.online and args.task != "parity":
        return _refuse(_ONLINE_TEXT_ONLY)
    if args.online:  # the same experiment with online rounds (dpokit.tasks.online_demo)
        from .online_demo import run_online_demo

        run_online_demo(settings, strategy=args.strategy, rounds=args.rounds)
        return 0
    run_demo(settings)
    return 0
