"""``dpokit bench --modality diffusion``: one Diffusion-DPO step, dpokit's scorer against the official step.

The model is a tiny ``diffusers.UNet2DConditionModel`` built from the seed (``--unet-channels``,
``--diffusion-size`` pixels, 3 channels, cross-attention on a fixed per-example condition of
``--condition-tokens`` tokens), a ``DDPMScheduler`` (1000 steps, epsilon), and a fixed sequence of
random image pairs. The policy and the reference start from different weights, so the first-step
loss is not log 2, and every configuration runs the same batches with the same noise and timesteps
in its own process (peak memory is that configuration's own):

* ``official``: the step as SalesforceAIResearch/DiffusionDPO ``train.py`` writes it (full fine-tune):
  the pair concatenated into one batch of 2B, the pair's noise and timestep repeated
  (``noise.chunk(2)[0].repeat(2, 1, 1, 1)``), a forward of the trained UNet, a forward of a separate
  frozen ``ref_unet`` under ``no_grad``, ``-logsigmoid(-0.5 beta_dpo (model_diff - ref_diff))``;
  with ``--diffusion-lora`` the diffusers ``train_diffusion_dpo.py`` step instead (LoRA on
  ``to_q/k/v/out.0``, the reference the same UNet with ``disable_adapters()`` under ``no_grad``);
* ``dpokit``: :class:`dpokit.scoring.diffusion.DiffusionScorer` (live reference: a frozen copy, or
  with LoRA the adapter-disabled policy) -> ``dpo`` (beta = 0.5 beta_dpo);
* ``dpokit+cached_ref``: the same with the reference's errors precomputed per (example, draw)
  (:mod:`dpokit.scoring.diffusion.cached`, built beforehand and not timed): no reference forward and,
  for a full fine-tune, no reference weights in memory.

Each then runs backward, gradient clipping at 1.0 and an AdamW step. The report gives pairs/s, peak
memory, their ratios to ``official``, and the first-step losses (all must agree: the same
surrogate on the same noise). See ``docs/performance.md``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
from typing import Any, Dict, List

from .measure import PeakMemory, timed_steps
from .report import cpu_name, fastest

CONFIGS = ("official", "dpokit", "dpokit+cached_ref")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("--modality diffusion (tiny UNet2DConditionModel)")
    group.add_argument("--diffusion-size", type=int, default=16, help="image side in pixels (default 16)")
    group.add_argument("--unet-channels", default="32,64", help="UNet block_out_channels (default 32,64)")
    group.add_argument("--condition-tokens", type=int, default=4, help="condition tokens per example (default 4)")
    group.add_argument("--beta-dpo", type=float, default=2.0,
                       help="Salesforce beta_dpo (dpokit's dpo beta is half of it). Default 2: the policy and the "
                            "reference start from different random weights, and the published 5000 would saturate "
                            "the first-step loss that all configurations must agree on (it changes no timing)")
    group.add_argument("--diffusion-lora", type=int, default=0, metavar="R",
                       help="LoRA rank on to_q/k/v/out.0 with the adapter-disabled reference, as the diffusers "
                            "script (default 0: full fine-tune with a frozen reference copy, as Salesforce)")


def unet(spec: Dict[str, Any], seed: int):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    channels = tuple(spec["channels"])
    return UNet2DConditionModel(sample_size=spec["size"], in_channels=3, out_channels=3, block_out_channels=channels,
                                layers_per_block=1, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) *
                                (len(channels) - 1), up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) +
                                ("UpBlock2D",), cross_attention_dim=spec["cond_dim"], attention_head_dim=8,
                                norm_num_groups=8)


def prepare(args, workdir: str) -> Dict[str, Any]:
    """Policy and reference weights (different seeds), the batches' images and conditions, saved."""
    import torch

    channels = [int(c) for c in args.unet_channels.split(",")]
    spec = {"size": args.diffusion_size, "channels": channels, "cond_dim": channels[0]}
    dirs = {}
    for name, seed in (("policy", args.seed), ("reference", args.seed + 1)):
        dirs[name] = os.path.join(workdir, name)
        model = unet(spec, seed)
        model.save_pretrained(dirs[name], safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    del model
    g = torch.Generator().manual_seed(args.seed)
    n = (args.warmup + args.steps) * args.batch_size
    images = torch.rand((n, 2, 3, args.diffusion_size, args.diffusion_size), generator=g) * 2 - 1
    conditions = torch.randn((n, args.condition_tokens, spec["cond_dim"]), generator=g)
    from safetensors.torch import save_file

    data = os.path.join(workdir, "data.safetensors")
    save_file({"images": images, "conditions": conditions}, data)
    return dict(spec, dirs=dirs, data=data, parameters=params)


# ---- workers (each in its own process) -----------------------------------------------------------

def _batches(spec):
    import torch
    from safetensors.torch import load_file

    from ..data.images import ImageBatch

    data = load_file(spec["data"])
    bs, device = spec["batch_size"], spec["device"]
    out = []
    for start in range(0, data["images"].shape[0], bs):
        b = data["images"][start:start + bs].shape[0]
        out.append(ImageBatch(data["images"][start:start + bs], {"encoder_hidden_states": data["conditions"][start:start + bs]},
                              torch.arange(start, start + b), torch.zeros(b, dtype=torch.long), [""] * b).to(device))
    return out


def _load(spec, name):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(spec["dirs"][name], use_safetensors=True).to(spec["device"])
    if spec["lora"]:
        from peft import LoraConfig

        import torch

        model.requires_grad_(False)
        torch.manual_seed(spec["seed"] + 11)  # lora_A's init: the same adapter in every worker
        model.add_adapter(LoraConfig(r=spec["lora"], lora_alpha=spec["lora"], init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        with torch.no_grad():  # lora_B starts at zero: move it so policy != reference at step 0
            g = torch.Generator().manual_seed(spec["seed"] + 7)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g).to(p.device))
    return model


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000)


def official_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The official step (module docstring), written from the Salesforce and diffusers scripts."""
    import torch
    import torch.nn.functional as F

    from ..scoring.diffusion import draw_noise

    device = spec["device"]
    batches = _batches(spec)
    sched = _scheduler()
    gc.collect()
    memory = PeakMemory(device)
    policy = _load(spec, "policy").train()
    ref_unet = None if spec["lora"] else _load(spec, "reference").eval().requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)

    def official_loss(batch):
        b = batch.images.shape[0]
        latents = torch.cat([batch.images[:, 0], batch.images[:, 1]])  # [w; l], 2B
        eps, t = draw_noise(latents.shape[1:], batch.indices.tolist(), batch.draws.tolist(), spec["seed"], (0, 1000))
        noise, timesteps = eps.to(device).repeat(2, 1, 1, 1), t.to(device).repeat(2)
        noisy = sched.add_noise(latents, noise, timesteps)
        cond = batch.conditions["encoder_hidden_states"].repeat(2, 1, 1)
        pred = policy(noisy, timesteps, cond).sample
        model_losses = (pred.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
        model_diff = model_losses[:b] - model_losses[b:]
        with torch.no_grad():
            if ref_unet is None:  # diffusers: the same UNet with its adapters off
                policy.disable_adapters()
                ref_pred = policy(noisy, timesteps, cond).sample
                policy.enable_adapters()
            else:
                ref_pred = ref_unet(noisy, timesteps, cond).sample
            ref_losses = (ref_pred.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
            ref_diff = ref_losses[:b] - ref_losses[b:]
        return -F.logsigmoid(-0.5 * spec["beta_dpo"] * (model_diff - ref_diff)).mean()

    return timed_steps(batches, official_loss, params, optimizer, spec, memory)


def dpokit_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from ..losses import build_loss
    from ..reference import ModelReference
    from ..scoring.diffusion import DiffusionScorer
    from ..scoring.diffusion.cached import PrecomputedDenoisingReference

    device = spec["device"]
    batches = _batches(spec)
    loss_fn = build_loss({"name": "dpo", "beta": 0.5 * spec["beta_dpo"]})
    scorer = DiffusionScorer(loss_fn.needs, _scheduler(), seed=spec["seed"])
    gc.collect()
    memory = PeakMemory(device)
    policy = _load(spec, "policy").train()
    if spec.get("cache"):
        reference = PrecomputedDenoisingReference(PrecomputedDenoisingReference.load(spec["cache"]), spec["cache"])
    elif spec["lora"]:
        reference = _AdaptersOff(policy)
    else:
        reference = ModelReference(_load(spec, "reference"))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    return timed_steps(batches, lambda batch: loss_fn(scorer.loss_inputs(policy, batch, reference)).loss.mean(),
                       params, optimizer, spec, memory)


class _AdaptersOff:
    """The diffusers-integrated LoRA UNet with its adapters off (``AdapterDisabledReference`` for
    ``add_adapter`` models, which have no PEFT wrapper)."""

    has_model = True

    def __init__(self, model):
        self.model = model

    def active(self):
        import contextlib

        @contextlib.contextmanager
        def off():
            self.model.disable_adapters()
            try:
                yield self.model
            finally:
                self.model.enable_adapters()

        return off()


def cache_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Build the precomputed reference (untimed) into ``spec["cache_dir"]``."""
    from ..data.images import ImageExample
    from ..losses import build_loss
    from ..scoring.diffusion import DiffusionScorer
    from ..scoring.diffusion.cached import precompute

    batches = _batches(spec)
    scorer = DiffusionScorer(build_loss({"name": "dpo"}).needs, _scheduler(), seed=spec["seed"])
    policy = _load(spec, "policy")
    reference = _AdaptersOff(policy) if spec["lora"] else _load(spec, "reference")
    examples, conditions = [], {}
    for batch in batches:
        for i, index in enumerate(batch.indices.tolist()):
            examples.append(ImageExample(str(index), batch.images[i], index=index))
            conditions[str(index)] = batch.conditions["encoder_hidden_states"][i]

    def encode(captions):
        import torch

        return {"encoder_hidden_states": torch.stack([conditions[c] for c in captions])}

    cached = precompute(scorer, reference, examples, [0], encode, spec["batch_size"], spec["cache_dir"], spec["device"])
    return {"path": cached.path, "examples": len(examples)}


WORKERS = {"official": official_worker, "dpokit": dpokit_worker, "cache": cache_worker}


def run_worker(path: str) -> int:
    from .workers import run_spec_worker

    return run_spec_worker(path, WORKERS)


def spawn(spec: Dict[str, Any], workdir: str, label: str) -> Dict[str, Any]:
    """Run ``spec`` in a fresh ``python -m dpokit.bench.diffusion --worker SPEC`` process; its result."""
    from .workers import spawn_module

    return spawn_module("dpokit.bench.diffusion", spec, workdir, label)


# ---- the run -------------------------------------------------------------------------------------

def summarise(result: Dict[str, Any], warmup: int, batch_size: int) -> Dict[str, Any]:
    measured = result["times"][warmup:]
    return {"pairs_per_s": batch_size * len(measured) / sum(measured), "peak_memory_mb": result["peak_bytes"] / 2 ** 20,
            "step_seconds": result["times"], "losses": result["losses"], "memory_method": result["memory_method"]}


def run(args, workdir: str) -> int:
    """The diffusion benchmark (module docstring) for the parsed ``dpokit bench`` arguments."""
    import torch

    from .workers import quiet

    # text options this benchmark does not read: refused when set, never silently ignored
    for flag, value, default in (("--compare", getattr(args, "compare", None), None),
                                 ("--dtype", getattr(args, "dtype", "float32"), "float32"),
                                 ("--attn", getattr(args, "attn", "auto"), "auto"),
                                 ("--projection", getattr(args, "projection", "chunked"), "chunked")):
        if value != default:
            raise SystemExit(f"{flag} {value}: not available with --modality diffusion (it times the tiny UNet in "
                             "float32 against the official Diffusion-DPO step)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    clock = "wall" if device.startswith("cuda") else args.clock
    quiet()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"preparing a tiny UNet and image pairs in {workdir} ...")
    prepared = prepare(args, workdir)
    base = dict(prepared, device=device, batch_size=args.batch_size, beta_dpo=args.beta_dpo, lr=args.lr,
                seed=args.seed, lora=args.diffusion_lora, threads=args.threads, clock=clock)
    cache = spawn(dict(base, kind="cache", cache_dir=os.path.join(workdir, "cache")), workdir, "cache")
    configs = [("official", dict(base, kind="official")), ("dpokit", dict(base, kind="dpokit")),
               ("dpokit+cached_ref", dict(base, kind="dpokit", cache=cache["path"]))]
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _ in configs}
    loads = []
    for repeat in range(max(1, args.repeats)):
        for label, spec in configs:
            log(f"measuring {label} (run {repeat + 1}/{max(1, args.repeats)}) ...")
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
            runs[label].append(summarise(spawn(dict(spec), workdir, f"{label}-{repeat}"), args.warmup,
                                         args.batch_size))
    results = fastest(runs)
    official = results["official"]
    report: Dict[str, Any] = {
        "modality": "diffusion",
        "machine": {"device": device, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": cpu_name(),
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "torch": torch.__version__, "load_average_at_start_of_runs": loads},
        "setup": {"model": "UNet2DConditionModel", "block_out_channels": prepared["channels"],
                  "parameters": prepared["parameters"], "image_size": prepared["size"],
                  "condition_tokens": args.condition_tokens, "batch_size": args.batch_size, "steps": args.steps,
                  "warmup": args.warmup, "beta_dpo": args.beta_dpo, "lora_rank": args.diffusion_lora,
                  "official": "diffusers train_diffusion_dpo.py (LoRA, adapters-off reference)" if args.diffusion_lora
                  else "Salesforce DiffusionDPO train.py (full fine-tune, frozen ref_unet)",
                  "repeats": max(1, args.repeats), "clock": clock},
        "configurations": results,
        "ratios": {label: {"pairs_per_s": r["pairs_per_s"] / official["pairs_per_s"],
                           "peak_memory": r["peak_memory_mb"] / official["peak_memory_mb"],
                           "first_step_loss_difference": r["losses"][0] - official["losses"][0]}
                   for label, r in results.items()},
    }
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def format_report(report: Dict[str, Any]) -> str:
    m, s = report["machine"], report["setup"]
    where = m["gpu"] or f"{m['processor']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads"
    lines = [f"dpokit bench --modality diffusion on {m['device']} ({where}), torch {m['torch']}",
             f"model: {s['model']} {s['block_out_channels']}, {s['parameters'] / 1e6:.2f}M parameters, "
             f"{s['image_size']}px, LoRA rank {s['lora_rank'] or 'none (full fine-tune)'}; official: {s['official']}",
             f"batch {s['batch_size']} pairs, {s['steps']} measured steps after {s['warmup']} warm-up; {s['clock']} "
             f"clock, fastest of {s['repeats']} run(s)", ""]
    header = f"{'configuration':<20}{'pairs/s':>9}{'peak MB':>9}{'loss@1':>12}{'x speed':>9}{'x memory':>10}"
    lines += [header, "-" * len(header)]
    for label, r in report["configurations"].items():
        ratio = report["ratios"][label]
        lines.append(f"{label:<20}{r['pairs_per_s']:>9.2f}{r['peak_memory_mb']:>9.1f}{r['losses'][0]:>12.8f}"
                     f"{ratio['pairs_per_s']:>8.2f}x{ratio['peak_memory']:>9.2f}x")
    lines.append(f"peak memory: {next(iter(report['configurations'].values()))['memory_method']}, above the process "
                 "before the models were loaded; ratios are to 'official'")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        raise SystemExit(run_worker(sys.argv[2]))
    raise SystemExit("usage: dpokit bench --modality diffusion [options]")
