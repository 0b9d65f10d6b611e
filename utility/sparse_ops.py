"""Sparse products and gather kernels used by the models and the objectives.

They compute ordinary products (``adj @ x``, ``table[index]``, row-wise dot products) with less
memory traffic than the plain PyTorch expressions on CPU; the method lives in ``Models.py``.
"""
import torch


def sparse_dense(adj, x):
    """adj @ x. On CPU the product is written into a fresh uninitialised tensor (beta = 0), which
    skips the zero fill that torch.sparse.mm does first; rows without entries still come out 0."""
    if x.device.type != "cpu":
        return torch.sparse.mm(adj, x)
    out = torch.empty(adj.shape[0], x.shape[1], dtype=x.dtype)
    return torch.addmm(out, adj, x, beta=0, out=out)


class _SparseMatmul(torch.autograd.Function):
    """adj @ x with a precomputed transpose for the backward pass (adj^T @ grad)."""

    @staticmethod
    def forward(ctx, adj, adj_t, x):
        ctx.adj_t = adj_t
        return sparse_dense(adj, x)

    @staticmethod
    def backward(ctx, grad):
        return None, None, sparse_dense(ctx.adj_t, grad.contiguous())


def gather_rows(table, index):
    """table[index] for an index tensor of any shape, via index_select (whose backward, an
    index_add, is faster on CPU than the scatter of advanced indexing)."""
    return torch.index_select(table, 0, index.reshape(-1)).view(*index.shape, table.shape[-1])


class _GatherDot(torch.autograd.Function):
    """scores[b, k] = <rows[b], table[index[b, k]]>, a block of batch rows at a time.

    The (rows, list length, d) block of gathered table rows is never formed for the whole batch,
    nor saved for the backward pass: each block is gathered, used and freed (and gathered again in
    the backward pass), so the memory stays at one block whatever the batch size.
    """

    @staticmethod
    def forward(ctx, rows, table, index, block):
        n, length = index.shape
        out = torch.empty(n, length, dtype=table.dtype, device=table.device)
        for start in range(0, n, block):
            end = min(n, start + block)
            items = gather_rows(table, index[start:end])
            torch.sum(rows[start:end, None, :] * items, -1, out=out[start:end])
        ctx.save_for_backward(rows, table, index)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, table, index = ctx.saved_tensors
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for start in range(0, index.shape[0], ctx.block):
            end = min(index.shape[0], start + ctx.block)
            g = grad[start:end, :, None]
            if grad_table is not None:
                grad_table.index_add_(0, index[start:end].reshape(-1),
                                      (g * rows[start:end, None, :]).reshape(-1, table.shape[1]))
            if grad_rows is not None:
                torch.sum(g * gather_rows(table, index[start:end]), 1, out=grad_rows[start:end])
        return grad_rows, grad_table, None, None


def gather_dot(rows, table, index, block_elements=1 << 18):
    """<rows[b], table[index[b, k]]> for (B, d) rows and a (B, K) index: (B, K) scores.

    Equal to ``(rows[:, None] * gather_rows(table, index)).sum(-1)``, computed in blocks of about
    ``block_elements`` gathered values (see :class:`_GatherDot`).
    """
    block = max(1, block_elements // max(1, index.shape[1] * table.shape[1]))
    return _GatherDot.apply(rows, table, index, block)


def spmm(adj, adj_t, x):
    """Sparse-dense product; gradients flow to ``x`` only."""
    if not x.requires_grad:
        return sparse_dense(adj, x)
    return _SparseMatmul.apply(adj, adj_t, x)
