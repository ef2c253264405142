"""InPO on the bimodal diffusion demo with the inversion changed: the ablations of ``docs/diffusion.md``
(section "InPO's reversal: ablations"). One demo run per call; the demo's own pretraining, pairing,
training and evaluation, only the inversion the ``inpo`` run trains on is replaced:

    python benchmarks/inpo_inversion_ablation.py --prefer A --seed 0 --eta 0.0
    python benchmarks/inpo_inversion_ablation.py --prefer B --seed 1 --inversion-model reference
    python benchmarks/inpo_inversion_ablation.py --prefer A --seed 0 --steps 50
    python benchmarks/inpo_inversion_ablation.py --prefer A --seed 0 --project-x0   # diagnostic only

``--project-x0`` is a diagnostic, not a method: it removes the per-sample least-squares component of
``x0`` from the implied noise, ``eps' = eps_t - c x0`` with ``c = <eps_t, x0> / <x0, x0>``, so the
pair is scored at ``x_t' = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps'``. The result is in
``OUTPUT_DIR/summary.json`` (``before`` / ``after`` ``fraction_in_A``), as for ``dpokit demo``.
"""

import argparse

import dpokit.tasks.diffusion_demo as demo
from dpokit.scoring.diffusion.inversion import Inversion


class ProjectedInversion(Inversion):
    """DDIM inversion whose implied noise has its component along ``x0`` removed (diagnostic)."""

    def invert(self, predict, x0, t, conditions, indices=None, draws=None, m=1):
        x, eps = super().invert(predict, x0, t, conditions, indices, draws, m)
        c = (eps * x0).flatten(1).sum(1) / x0.pow(2).flatten(1).sum(1).clamp_min(1e-12)
        return x, eps - c.view(-1, *([1] * (x0.dim() - 1))) * x0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefer", choices=("A", "B"), default="A")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=0.1, help="inversion eta (the demo's and the official code's: 0.1)")
    p.add_argument("--inversion-model", choices=("policy", "reference"), default="policy")
    p.add_argument("--steps", type=int, default=5, help="inverse DDIM steps (the demo's default 5)")
    p.add_argument("--project-x0", action="store_true", help="diagnostic: remove the x0 component of eps_t")
    p.add_argument("--output-dir", default=None)
    a = p.parse_args(argv)
    cls = ProjectedInversion if a.project_x0 else Inversion
    demo.demo_inversion = lambda loss, scheduler, s: cls(scheduler, "ddim_inversion", steps=s.inversion_steps,
                                                         eta=a.eta, model=a.inversion_model, seed=s.seed)
    tag = f"inpo-{a.prefer}-{a.seed}-eta{a.eta}-{a.inversion_model}{'-proj' if a.project_x0 else ''}-s{a.steps}"
    settings = demo.DiffusionDemoSettings(output_dir=a.output_dir or f"runs/{tag}", loss="inpo", prefer=a.prefer,
                                          seed=a.seed, inversion_steps=a.steps)
    demo.run_diffusion_demo(settings)


if __name__ == "__main__":
    main()
