"""Worker for test_distributed: runs on each of two gloo processes with unequal batch sizes."""

import torch
import torch.distributed as dist

from dpokit.losses import LossInputs, apply_modifiers, get_loss
from dpokit.losses._distributed import gather_detached_with_offset, global_mean

SIZES = (3, 2)


def global_pairs():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    pw, pl, rw, rl = (-(1 + 20 * torch.rand(n, generator=g, dtype=torch.float64)) for _ in range(4))
    return pw, pl, rw, rl


LABELS = torch.tensor([True, False, True, False, True])


def single_process_references():
    """Losses of the whole (global) batch, computed before any process group exists."""
    pw, pl, rw, rl = global_pairs()
    refs = {}
    for name in ("aot", "aot_unpaired"):
        a = pw.clone().requires_grad_()
        b = pl.clone().requires_grad_()
        full = get_loss(name, beta=0.3)(LossInputs(policy_chosen_logps=a, policy_rejected_logps=b,
                                                  reference_chosen_logps=rw, reference_rejected_logps=rl)).loss
        full.sum().backward()
        refs[name] = (full.detach(), a.grad, b.grad)
    refs["kto"] = get_loss("kto")(LossInputs(policy_logps=pw, reference_logps=rw, labels=LABELS,
                                             kl_policy_logps=pw + 3.0, kl_reference_logps=rw))
    return refs


def run(rank: int, init_file: str) -> None:
    refs = single_process_references()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        _checks(rank, refs)
        dist.barrier()  # both processes finish their collectives before teardown
    finally:
        dist.destroy_process_group()


def _checks(rank: int, refs) -> None:
    lo = sum(SIZES[:rank])
    hi = lo + SIZES[rank]
    pw, pl, rw, rl = global_pairs()

    # gather with unequal sizes
    gathered, offset = gather_detached_with_offset(pw[lo:hi])
    assert offset == lo and torch.equal(gathered, pw)
    assert torch.allclose(global_mean(pw[lo:hi]), pw.mean())

    # AOT: each process returns its slice of the loss of the globally sorted batch; gradients match
    for name in ("aot", "aot_unpaired"):
        full, grad_a, grad_b = refs[name]
        la = pw[lo:hi].clone().requires_grad_()
        lb = pl[lo:hi].clone().requires_grad_()
        local = get_loss(name, beta=0.3)(LossInputs(policy_chosen_logps=la, policy_rejected_logps=lb,
                                                   reference_chosen_logps=rw[lo:hi],
                                                   reference_rejected_logps=rl[lo:hi])).loss
        assert torch.allclose(local, full[lo:hi]), name
        local.sum().backward()
        assert torch.allclose(la.grad, grad_a[lo:hi]), name
        assert torch.allclose(lb.grad, grad_b[lo:hi]), name

    # KTO: z_ref is the mean over every process's examples
    labels = LABELS
    kl_p, kl_r = pw + 3.0, rw
    kto_full = refs["kto"]
    kto_local = get_loss("kto")(LossInputs(policy_logps=pw[lo:hi], reference_logps=rw[lo:hi], labels=labels[lo:hi],
                                           kl_policy_logps=kl_p[lo:hi], kl_reference_logps=kl_r[lo:hi]))
    assert torch.allclose(kto_local.metrics["kl"], kto_full.metrics["kl"])
    assert torch.allclose(kto_local.loss, kto_full.loss[lo:hi])

    # BCO (unpaired and pair): the running mean gathers every process's rewards
    bco = get_loss("bco")
    bco(LossInputs(policy_logps=pw[lo:hi], reference_logps=rw[lo:hi], labels=labels[lo:hi]))
    assert abs(bco.state_dict()["mean"] - float((0.1 * (pw - rw)).mean())) < 1e-12
    assert bco.state_dict()["count"] == sum(SIZES)
    bp = get_loss("bco_pair")
    bp(LossInputs(policy_chosen_logps=pw[lo:hi], policy_rejected_logps=pl[lo:hi], reference_chosen_logps=rw[lo:hi],
                  reference_rejected_logps=rl[lo:hi]))
    want = float(torch.cat([0.01 * (pw - rw), 0.01 * (pl - rl)]).mean())
    assert abs(bp.state_dict()["mean"] - want) < 1e-12

    # beta-DPO: one selection for the global batch, the same beta on every process
    torch.manual_seed(100 + rank)  # different RNG streams: the mask must still agree
    loss = apply_modifiers(get_loss("dpo"), {"beta_dpo": {"rho": 0.4}})
    out = loss(LossInputs(policy_chosen_logps=pw[lo:hi], policy_rejected_logps=pl[lo:hi],
                          reference_chosen_logps=rw[lo:hi], reference_rejected_logps=rl[lo:hi]))
    selected = torch.tensor([float((out.loss != 0).sum())])
    dist.all_reduce(selected)
    assert int(selected.item()) == int(sum(SIZES) * 0.6)
    betas = [torch.zeros(1, dtype=torch.float64) for _ in range(2)]
    dist.all_gather(betas, out.metrics["beta_dpo/beta"].reshape(1))
    assert torch.equal(betas[0], betas[1])
    st = loss.state_dict()["modifiers"]["beta_dpo"]
    h = (pw - rw) - (pl - rl)
    assert abs(st["gap_mean"] - 0.1 * float(h.mean())) < 1e-12
