"""Fake (meta) kernels of the fpgm operators: output shapes and dtypes only, so the ops
trace under torch.compile and torch.export whichever backend serves them. They run the
same argument checks as every backend (fpgm_ext._checks)."""
import torch

from ._checks import check_gather_args, check_metric, check_weight, check_weights, matrix_shape, result_dtype


@torch.library.register_fake("fpgm::distance_scores")
def _distance_scores(weight, metric="l2"):
    check_metric("distance_scores", metric)
    check_weight("distance_scores", "weight", weight)
    return weight.new_empty((weight.shape[0],), dtype=result_dtype(weight.dtype))


@torch.library.register_fake("fpgm::distance_matrix")
def _distance_matrix(weight, metric="l2"):
    check_metric("distance_matrix", metric)
    check_weight("distance_matrix", "weight", weight)
    return weight.new_empty(matrix_shape(weight), dtype=result_dtype(weight.dtype))


@torch.library.register_fake("fpgm::distance_scores_multi")
def _distance_scores_multi(weights, metric="l2"):
    check_metric("distance_scores_multi", metric)
    check_weights("distance_scores_multi", weights)
    return [w.new_empty((w.shape[0],), dtype=result_dtype(w.dtype)) for w in weights]


@torch.library.register_fake("fpgm::gather_channels")
def _gather_channels(tensors, dims, indices):
    wrapped = check_gather_args(tensors, dims, indices)
    out = []
    for t, dim, idx in zip(tensors, wrapped, indices):
        shape = list(t.shape)
        shape[dim] = idx.shape[0]
        out.append(t.new_empty(shape))
    return out
