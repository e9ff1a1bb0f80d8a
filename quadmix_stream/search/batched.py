"""Several proxies trained at once in one process: one tiny model cannot fill a GPU.

The G proxies of a group share the architecture and the initial weights, so their weights are
stacked (``torch.func.stack_module_state``: every tensor gets a leading G axis) and one forward
and backward of ``vmap(functional_call(model))`` trains all of them, each on its own θ's batch.
The arithmetic is that of :func:`.proxy.train_one`, member by member:

* AdamW is element-wise, so one AdamW over the stacked tensors is G independent AdamWs (same
  step count and learning-rate schedule for all);
* gradient clipping uses each member's own gradient norm;
* a member whose loss turns non-finite is recorded as failed and frozen (its slice zeroed);
  the other members are independent of it and keep training.

Results match one-at-a-time training up to float reassociation (tested).
"""

from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from quadmix_stream.search.data import SelectionError, TokenStream
from quadmix_stream.search.proxy import (
    ProxyContext,
    ProxyJob,
    Ticker,
    autocast,
    build_model,
    decay_mask,
    finish,
    lm_loss,
    lr_at,
    result,
    stream_stats,
)


def _stack(model: torch.nn.Module, g: int, device: torch.device):
    params, buffers = stack_module_state([model] * g)
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    return params, buffers


def train_group(jobs: list[ProxyJob], ctx: ProxyContext) -> list[dict]:
    """Train and evaluate ``jobs`` together; returns one result record per job, in order."""
    cfg, dev = ctx.cfg, ctx.device
    t0 = time.perf_counter()
    out: list[dict | None] = [None] * len(jobs)
    streams: list[TokenStream] = []
    members: list[int] = []  # index into jobs of each stacked member
    sels: list[dict] = []
    for i, job in enumerate(jobs):
        try:
            st, sel = ctx.stream(job)
        except SelectionError as e:
            out[i] = result(job, "failed", reason=str(e), seconds=time.perf_counter() - t0)
            continue
        streams.append(st)
        members.append(i)
        sels.append(sel)
    if not members:
        return out  # type: ignore[return-value]

    g = len(members)
    model = build_model(cfg, ctx.tokenizer.vocab_size)
    decay = decay_mask(model)
    params, buffers = _stack(model, g, dev)
    skeleton = copy.deepcopy(model).to("meta")  # architecture only; weights come from `params`
    del model
    opt = torch.optim.AdamW(
        [
            {
                "params": [p for n, p in params.items() if decay[n]],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [p for n, p in params.items() if not decay[n]], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        foreach=True,
    )

    kwargs = {"attention_mask": ctx.attn_mask}

    def member_loss(p, b, ids):
        logits = functional_call(skeleton, (p, b), (), {"input_ids": ids, **kwargs}).logits
        s, c = lm_loss(logits, ids)
        return s / c

    losses_of = vmap(member_loss)
    alive = torch.ones(g, dtype=torch.bool)
    last = torch.full((g,), float("nan"))
    base = dict(mode="batched", group=g, device=str(dev), steps=cfg.steps)

    def fail(j: int, reason: str) -> None:
        alive[j] = False
        i = members[j]
        out[i] = result(
            jobs[i],
            "failed",
            reason=reason,
            seconds=time.perf_counter() - t0,
            expected=sels[j],
            **base,
            **stream_stats(streams[j]),
        )

    zeros = torch.zeros(cfg.batch_size, cfg.seq_len, dtype=torch.long)
    names = [jobs[i].name for i in members]
    tick = Ticker(ctx, f"{names[0]}…{names[-1]} (group of {g})" if g > 1 else names[0], g)
    for step in range(cfg.steps):
        rows = []
        for j, st in enumerate(streams):
            if alive[j]:
                try:
                    rows.append(st.next_batch())
                    continue
                except SelectionError as e:
                    fail(j, str(e))
            rows.append(zeros)
        if not alive.any():
            break
        batch = torch.stack(rows).to(dev, non_blocking=True)  # (G, batch, seq)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, cfg)
        total = torch.zeros(g, device=dev)
        for ids in batch.split(cfg.micro, dim=1):
            with autocast(dev):
                losses = losses_of(params, buffers, ids) * (ids.shape[1] / batch.shape[1])
            live = alive.to(dev)
            torch.where(live, losses, torch.zeros_like(losses)).sum().backward()
            total += losses.detach()
        last = total.float().cpu()
        for j in torch.nonzero(alive & ~torch.isfinite(last)).flatten().tolist():
            fail(j, f"diverged: training loss {float(last[j])} at step {step}")
        _step(params, opt, alive.to(dev), cfg.grad_clip)
        live = last[alive & torch.isfinite(last)]
        tick(step, float(live.mean()) if len(live) else float("nan"))

    losses = evaluate_group(skeleton, params, buffers, ctx)
    seconds = time.perf_counter() - t0  # the group's wall time, shared by its members
    for j, i in enumerate(members):
        if out[i] is not None:
            continue
        stats = dict(
            train_loss=float(last[j]),
            tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
            seconds=seconds / g,
            group_seconds=seconds,
            expected=sels[j],
            **base,
            **stream_stats(streams[j]),
        )
        out[i] = finish(jobs[i], {k: v[j] for k, v in losses.items()}, ctx, stats)
    del params, buffers, opt
    return out  # type: ignore[return-value]


@torch.no_grad()
def _step(params: dict, opt: torch.optim.Optimizer, alive: torch.Tensor, clip: float) -> None:
    """Freeze failed members, clip each member's gradient by its own norm, take the AdamW step."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    g = alive.shape[0]
    for p in params.values():
        if p.grad is None:
            continue
        view = (g,) + (1,) * (p.ndim - 1)
        p.grad.mul_(alive.view(view)).nan_to_num_(0.0, 0.0, 0.0)
        p.mul_(alive.view(view))  # a failed member's weights become zeros (never NaN compute)
    if clip > 0 and grads:
        sq = torch.stack([gr.float().pow(2).flatten(1).sum(1) for gr in grads]).sum(0)
        coef = (clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for gr in grads:
            gr.mul_(coef.view((g,) + (1,) * (gr.ndim - 1)).to(gr.dtype))
    opt.step()
    opt.zero_grad(set_to_none=True)
    for state in opt.state.values():  # failed members: no moments left to replay
        for v in state.values():
            if torch.is_tensor(v) and v.ndim and v.shape[0] == g:
                v.mul_(alive.view((g,) + (1,) * (v.ndim - 1))).nan_to_num_(0.0, 0.0, 0.0)


@torch.no_grad()
def evaluate_group(
    skeleton, params: dict, buffers: dict, ctx: ProxyContext
) -> dict[str, list[float]]:
    """Mean per-token loss of every stacked member on every evaluation set (same blocks for all)."""

    kwargs = {"attention_mask": ctx.attn_mask}

    def member(p, b, ids, mask):
        logits = functional_call(skeleton, (p, b), (), {"input_ids": ids, **kwargs}).logits
        return torch.stack(lm_loss(logits, ids, mask))

    fn = vmap(member, in_dims=(0, 0, None, None))
    g = next(iter(params.values())).shape[0]
    bs = ctx.cfg.eval_batch_size
    out = {}
    for name, (all_ids, all_mask) in ctx.evals.items():
        acc = torch.zeros(g, 2, dtype=torch.float64, device=ctx.device)
        for i in range(0, all_ids.shape[0], bs):
            ids = all_ids[i : i + bs].to(ctx.device)
            mask = all_mask[i : i + bs].to(ctx.device)
            with autocast(ctx.device):
                acc += fn(params, buffers, ids, mask).double()
        out[name] = (acc[:, 0] / acc[:, 1]).tolist()
    return out
