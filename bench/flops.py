"""Floating-point operation counts of one training step of each stage, from the model's shapes.

Only the products are counted: dense matrix products (2 m k n each) and sparse-dense products
(2 nnz d each), forward and backward, for the computation the implementation performs
(Models.py). Element-wise work, gathers and the optimizer update are left out: the floor is what
the arithmetic alone would take at the machine's measured product rates.

Backward of a product Y = A B costs one product per operand that needs a gradient (dA = dY B^T,
dB = A^T dY); constants (features, graphs, frozen weights) need none.
"""
import math


def _mm(m, k, n):
    return 2.0 * m * k * n


def teacher_step(s, stage=1):
    """{'dense': flops, 'sparse': flops} of one teacher forward + backward.

    s: dict with n_users, n_items, embed_size, token_size, modality_dims, nnz_adj, nnz_train,
    cf_layers, mm_layers, prompt (bool), feat_prompt (bool), emb_prompt (bool).
    stage 1 trains every weight; stage 2 runs the teacher's whole forward pass with gradients reaching
    the prompt module only (the frozen weights need none).
    """
    U, I, d, t = s["n_users"], s["n_items"], s["embed_size"], s["token_size"]
    dense = sparse = 0.0
    if s["prompt"]:
        dense += _mm(U + I, t, d) * 2            # P = H A^T + b: forward, and dA (tokens are constants)
    for dm in s["modality_dims"].values():
        dense += _mm(I, dm, d) * (2 if stage == 1 else 1)   # X W^T forward, and dW in stage 1 (X is a constant)
        if s["prompt"] and s["feat_prompt"]:
            small = _mm(d, t, dm) + _mm(d, dm, d) + _mm(d, dm, d)   # context, C C^T, C W^T
            small_bwd = _mm(d, dm, t) + 2 * _mm(d, d, dm) + (_mm(d, d, dm) if stage == 1 else 0) + _mm(d, dm, d)
            big = 2 * _mm(I, d, d)               # P (C C^T) and P (C W^T)
            dense += small + small_bwd + big + 2 * big   # each big product: dP and d(small factor)
        # modality GNN: mm_layers hops user<-item and item<-user, forward, and backward when trained
        backward = stage == 1 or (s["prompt"] and s["feat_prompt"])
        sparse += s["mm_layers"] * 2 * (2.0 * s["nnz_train"] * d) * (2 if backward else 1)
    backward = stage == 1 or (s["prompt"] and s["emb_prompt"])
    sparse += s["cf_layers"] * (2.0 * s["nnz_adj"] * d) * (2 if backward else 1)   # LightGCN
    return {"dense": dense, "sparse": sparse}


def student_step(s, batch, extra_negatives, student_size, teacher_size):
    """Products of the student's own forward + backward for one batch (KD terms included)."""
    d = student_size
    list_len = 2 + 1 + extra_negatives            # scored items per row: (pos, neg) and [pos, K negatives]
    dense = 0.0
    sparse = s["cf_layers"] * (2.0 * s["nnz_adj"] * d) * 2   # the student's LightGCN, forward and backward
    dense += 3 * 2.0 * batch * list_len * d               # student logits, forward and backward
    modalities = len(s["modality_dims"])
    dense += modalities * 3 * 2.0 * batch * (1 + extra_negatives) * teacher_size   # teacher list logits
    return {"dense": dense, "sparse": sparse}


def epoch_steps(n_train, batch):
    return math.ceil(n_train / batch)


def eval_pass(n_eval_users, n_items, embed_size):
    """The scoring product of a full evaluation pass, and the candidates top-k must scan."""
    return {"dense": _mm(n_eval_users, embed_size, n_items), "topk_elements": float(n_eval_users) * n_items}
