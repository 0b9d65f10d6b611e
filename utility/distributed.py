"""Data-parallel training with torch.distributed, as launched by torchrun.

Every rank holds the whole model and graph (PromptMM's teacher propagates over the full graph at
every step). Each epoch's triples are drawn identically on every rank from the same seed; each
global batch of ``world_size * batch_size`` rows is split so that rank r takes rows r, r + N, ...
After the backward pass the gradients are all-reduced, weighted by each rank's row count, which
gives exactly the gradient of the loss over the whole global batch (every loss term is a batch
mean). Evaluation splits users across ranks and sums the metric totals.
"""
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_without_finalizing(code):
    """End a rank's process once its run is over and its process group destroyed.

    Gloo's worker threads release the tensors of a finished collective a moment after the
    collective returns, and releasing one takes the GIL. If that lands while the interpreter is
    finalizing, the thread is torn down inside a C++ destructor and the process aborts (SIGABRT)
    after a run that has already succeeded. Everything the run writes is closed by then, so the
    process flushes its standard streams and leaves without finalizing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shard_rows(rank, world_size, rows):
    """Rows ``rank, rank + world_size, ...`` of ``rows``: the ranks' slices partition the batch."""
    return slice(rank, rows, world_size)


class Distributed:
    """The process group of a torchrun launch (NCCL on CUDA, Gloo on CPU)."""

    def __init__(self, device_type):
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cuda", self.local_rank) if device_type == "cuda" else torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, rows):
        """This rank's rows of a global batch of ``rows`` rows (a slice with a step).

        Rank r takes rows r, r + N, ...; with fewer rows than ranks, the ranks past the last row
        take none (each row is counted once in the all-reduced gradient).
        """
        return shard_rows(self.rank, self.world_size, rows)

    def sync_gradients(self, params, local_rows, global_rows):
        """Replace each gradient by the global-batch gradient: sum_r (rows_r / rows) grad_r."""
        grads = [p.grad for p in params if p.grad is not None]
        if len(grads) != len([p for p in params if p.requires_grad]):
            # a rank whose loss did not touch a parameter still has to take part in the reduction
            for p in params:
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in params if p.requires_grad]
        flat = torch.cat([g.reshape(-1) for g in grads]) * (local_rows / global_rows)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag):
        """True on every rank when ``flag`` is true on at least one."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    def broadcast_all(self, obj):
        """Every rank's Python object, as a list indexed by rank."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's Python object, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_replicas(self, params):
        """Raise unless every rank holds bit-identical parameters (max over ranks == min over ranks)."""
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        if not torch.equal(high, low):
            raise RuntimeError(f"rank {self.rank}: parameters differ across ranks")

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()
