"""Claim (DPA, Wang et al. 2024, arXiv 2402.18571, in miniature): after DPA's rejection-sampling
fine-tuning rounds, the direction in the prompt sets the trade-off between two objectives in the asked
proportion; and (RPS, arXiv 2510.20498) at directions outside the trained arc, selecting among samples of
neighbouring directions by the user's direction beats sampling at the user's direction.

Task (``dpokit.tasks.directions``): answers are words ``x``/``y``; ``r_x = sqrt(share of x)``,
``r_y = sqrt(share of y)``. For ``v = (cos theta, sin theta)`` the answer maximizing ``v . r`` has y-share
``sin^2 theta``: the asked proportion. Per seed: a tiny Llama, an SFT warm-up whose answers ignore the
direction (random mixes), then ``online.strategy: dpa_rsf``: 5 rounds x 256 prompts, a direction per prompt
with theta uniform on [0, 90] degrees, 8 samples of the direction-conditioned prompt, the best by ``v . r``
fine-tuned on (``sft_unpaired``, 2 epochs). Evaluation on 64 held-out prompts x 4 samples at theta =
0, 15, ..., 90: mean y-share and objectives.

Criteria (fixed before running), 3 seeds, 95% t-intervals:
* control: Spearman correlation between theta and the mean y-share after the rounds, CI above 0.8;
* proportion: mean |y-share - sin^2 theta| over the angles, warm-up minus after, CI above 0.
The claim holds when both hold.

RPS (a second arm, reported with its own verdict): the same, trained only on theta in [0, 20] degrees;
at theta* = 35, 40, 45 on the held-out prompts, best-of-5 at ``v*`` vs RPS with 5 directions evenly spaced
over theta* +- 10 degrees (one sample each), both selected by ``v* . r``; criterion: mean ``v* . r`` of RPS
minus direct, CI above 0. The sources give neither k nor delta; 5 and 10 degrees are ours.

    python benchmarks/claims/dpa.py [--seeds 0 1 2] [--out runs/claims/dpa] [--quick] [--rounds N]

``--rounds`` (default 5, the configuration the criteria were fixed with) changes the number of DPA rounds of
both arms; docs/claims.md reports the 5-round run and a 10-round run made after it.
"""

from __future__ import annotations

import math
import os
import time

import common

ANGLES = [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0]
RPS_ANGLES = [35.0, 40.0, 45.0]
FULL = {"rounds": 5}
QUICK = {"rounds": 2, "n_train_prompts": 128, "n_eval_prompts": 16, "eval_samples": 2, "prompts_per_round": 64,
         "warmup_steps": 60, "epochs": 1}


def ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a, b) -> float:
    """Rank correlation (average ranks for ties); 0 when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 0.0


def _control(per_angle) -> dict:
    shares = [per_angle[f"{a:g}"]["y_share"] for a in ANGLES]
    asked = [math.sin(math.radians(a)) ** 2 for a in ANGLES]
    return {"spearman": spearman(ANGLES, shares), "share_error": sum(abs(s - t) for s, t in zip(shares, asked)) / len(ANGLES),
            **{f"share_{a:g}": s for a, s in zip(ANGLES, shares)}}


def _metrics(summary: dict) -> dict:
    after, before = _control(summary["after"]), _control(summary["before"])
    out = {**after, "spearman_before": before["spearman"], "share_error_before": before["share_error"],
           "seconds": summary["seconds"]}
    out.update({f"before_share_{a:g}": summary["before"][f"{a:g}"]["y_share"] for a in ANGLES})
    return out


def _rps_metrics(summary: dict) -> dict:
    rps = summary["rps"]
    out = {"seconds": summary["seconds"]}
    for a in RPS_ANGLES:
        r = rps[f"{a:g}"]
        out[f"direct_{a:g}"], out[f"rps_{a:g}"], out[f"win_{a:g}"] = r["direct_value"], r["rps_value"], r["rps_win_rate"]
    out["gain"] = sum(out[f"rps_{a:g}"] - out[f"direct_{a:g}"] for a in RPS_ANGLES) / len(RPS_ANGLES)
    out["win"] = sum(out[f"win_{a:g}"] for a in RPS_ANGLES) / len(RPS_ANGLES)
    return out


def main(argv=None):
    from dpokit.tasks.directions import DPASettings, run_dpa_demo

    p = common.parser(__doc__.splitlines()[0], "runs/claims/dpa")
    p.add_argument("--rounds", type=int, default=None, help="DPA rounds (default 5; --quick: 2)")
    args = p.parse_args(argv)
    started = time.time()
    quiet = common.quiet_logs()
    size = {**(QUICK if args.quick else FULL), **({"rounds": args.rounds} if args.rounds else {})}
    results = {"dpa": {}, "rps_arm": {}}
    for seed in common.seeds_of(args):
        for arm, extra in (("dpa", {"eval_angles": ANGLES}),
                           ("rps_arm", {"train_angles": [0.0, 20.0], "eval_angles": [], "rps_angles": RPS_ANGLES})):
            directory = os.path.join(args.out, f"seed{seed}", arm)
            settings = DPASettings(output_dir=directory, seed=seed, **size, **extra)
            summary = common.cached_summary(directory, lambda: run_dpa_demo(settings, log=quiet))
            results[arm][seed] = (_metrics if arm == "dpa" else _rps_metrics)(summary)
        m, p = results["dpa"][seed], results["rps_arm"][seed]
        print(f"   seed {seed}: spearman {m['spearman']:.3f} (warm-up {m['spearman_before']:.3f}), share error "
              f"{m['share_error']:.3f} (warm-up {m['share_error_before']:.3f}); RPS - direct v*.r {p['gain']:+.4f}")
    lines = ["| theta | asked y-share (sin^2) | warm-up y-share | after DPA y-share |", "|---|---|---|---|"]
    for a in ANGLES:
        lines.append(f"| {a:g} | {math.sin(math.radians(a)) ** 2:.3f} | "
                     f"{common.interval(common.metric(results, 'dpa', f'before_share_{a:g}'))} | "
                     f"{common.interval(common.metric(results, 'dpa', f'share_{a:g}'))} |")
    lines += ["", "| theta* | direct best-of-5 v*.r | RPS v*.r | RPS win rate |", "|---|---|---|---|"]
    for a in RPS_ANGLES:
        cells = [common.interval(common.metric(results, "rps_arm", f"{k}_{a:g}")) for k in ("direct", "rps", "win")]
        lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
    rho = common.metric(results, "dpa", "spearman")
    rho_before = common.metric(results, "dpa", "spearman_before")
    error_gain = common.describe_values([results["dpa"][s]["share_error_before"] - results["dpa"][s]["share_error"]
                                         for s in sorted(results["dpa"])])
    gain = common.metric(results, "rps_arm", "gain")
    lines += ["", f"Spearman(theta, y-share) after DPA: {common.interval(rho)} (95% CI {common.ci_text(rho)}); "
                  f"warm-up {common.interval(rho_before)}",
              f"mean |y-share - sin^2 theta|: warm-up minus after {common.interval(error_gain)} "
              f"(95% CI {common.ci_text(error_gain)}); after {common.interval(common.metric(results, 'dpa', 'share_error'))}",
              f"RPS minus direct, mean v*.r at theta* {', '.join(f'{a:g}' for a in RPS_ANGLES)}: "
              f"{common.interval(gain)} (95% CI {common.ci_text(gain)}); win rate "
              f"{common.interval(common.metric(results, 'rps_arm', 'win'))}", ""]
    low_rho, low_err, low_gain = common.lower(rho), common.lower(error_gain), common.lower(gain)
    lines.append(common.verdict([
        ("the direction controls the y-share (CI of Spearman above 0.8)", None if low_rho is None else low_rho > 0.8),
        ("the y-share is closer to the asked sin^2 theta than the warm-up's (CI of the error drop above 0)",
         None if low_err is None else low_err > 0)]))
    rps_word = "n/a" if low_gain is None else "HOLDS" if low_gain > 0 else "DOES NOT HOLD"
    lines.append(f"RPS beats direct conditioning outside the trained arc (CI of the v*.r gain above 0): {rps_word}")
    return common.finish("dpa", args, results, "\n".join(lines), started, sweep=False)


if __name__ == "__main__":
    main()
