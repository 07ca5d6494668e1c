"""2-process gloo worker for test_distributed.py (run with torchrun --nproc_per_node 2).

For DDP and for FSDP2 (fully_shard): a TetraJet MLP with Q-EMA (active from the first update) and
an oscillation tracker trains 2 steps, saves a checkpoint (model, optimizer, Q-EMA, tracker,
stochastic-rounding counters), trains a 3rd step; a fresh model (other init) loads the checkpoint
and runs the same 3rd step. Checks, written as JSON to <out>/<mode>_rank<r>.json:
  * Q-EMA buffers, tracker statistics and (full) weights identical across the 2 ranks,
  * resumed step == uninterrupted step, bit for bit (weights, Q-EMA, tracker).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tetrajet import TetraJetRecipe, convert_to_tetrajet, load_sr_state, sr_state
from tetrajet._dist import full_tensor
from tetrajet.oscillation import OscillationTracker
from tetrajet.qema import QEMA
from torch import nn


def build(init_seed: int) -> nn.Module:
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(40, 64), nn.GELU(), nn.Linear(64, 10))
    return convert_to_tetrajet(model, TetraJetRecipe.tetrajet(seed=7))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(24, 40, generator=g), torch.randint(0, 10, (24,), generator=g)


class Run:
    def __init__(self, mode: str, init_seed: int) -> None:
        model = build(init_seed)
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (dist.get_world_size(),))
            for layer in (model[0], model[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        self.mode = mode
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.01)
        self.qema = QEMA(model, beta=0.9, start_step=1)
        self.tracker = OscillationTracker(model)

    def step(self, i: int) -> float:
        x, y = batch(dist.get_rank(), i)
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.qema.update()
        self.tracker.update()
        return float(loss.detach())

    def checkpoint(self) -> dict:
        if self.mode == "ddp":
            model_sd, opt_sd = self.model.state_dict(), self.opt.state_dict()
        else:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

            model_sd = get_model_state_dict(self.model)
            opt_sd = get_optimizer_state_dict(self.model, self.opt)
        return {
            "model": model_sd,
            "optim": opt_sd,
            "qema": self.qema.state_dict(),
            "tracker": self.tracker.state_dict(),
            "sr": sr_state(self.model),
        }

    def load(self, ck: dict) -> None:
        if self.mode == "ddp":
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optim"])
        else:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

            set_model_state_dict(self.model, ck["model"])
            set_optimizer_state_dict(self.model, self.opt, ck["optim"])
        self.qema.load_state_dict(ck["qema"])
        self.tracker.load_state_dict(ck["tracker"])
        load_sr_state(self.model, ck["sr"])

    def snapshot(self) -> dict[str, torch.Tensor]:
        out = {f"param:{n}": full_tensor(p).float().clone() for n, p in self.model.named_parameters()}
        out.update({f"ema:{n}": t.clone() for n, t in self.qema.ema.items()})
        for kind, d in (("dist_w", self.tracker.dist_w()), ("dist_q", self.tracker.dist_q())):
            out.update({f"{kind}:{n}": t for n, t in d.items()})
        return out


def same_on_all_ranks(snap: dict[str, torch.Tensor]) -> list[str]:
    bad = []
    for k in sorted(snap):
        t = snap[k].flatten()
        got = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(got, t)
        if not all(torch.equal(got[0], g) for g in got[1:]):
            bad.append(k)
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="ddp,fsdp")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    for mode in args.modes.split(","):
        result: dict = {"mode": mode}
        try:
            run = Run(mode, init_seed=0)
            losses = [run.step(0), run.step(1)]
            path = os.path.join(args.out, f"{mode}_ck_rank{rank}.pt")
            torch.save(run.checkpoint(), path)
            dist.barrier()
            losses.append(run.step(2))
            ref = run.snapshot()
            result["losses"] = losses
            result["qema_active"] = run.qema.active
            result["flip_fraction"] = run.tracker.flip_fraction(3)
            result["not_equal_across_ranks"] = same_on_all_ranks(ref)
            resumed = Run(mode, init_seed=123)
            resumed.load(torch.load(path, weights_only=False))
            result["resumed_loss"] = resumed.step(2)
            got = resumed.snapshot()
            result["resume_mismatch"] = [k for k in sorted(ref) if not torch.equal(ref[k], got[k])]
            result["keys"] = len(ref)
        except Exception as e:  # report instead of hanging the other rank
            result["error"] = f"{type(e).__name__}: {e}"
        with open(os.path.join(args.out, f"{mode}_rank{rank}.json"), "w") as f:
            json.dump(result, f)
        if "error" in result:
            break
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
