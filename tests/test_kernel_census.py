"""scripts/kernel_census.py: what it counts, and that it walks the CUDA path on the CPU."""

import importlib.util
from pathlib import Path

import torch

import kernels

_spec = importlib.util.spec_from_file_location("kernel_census",
                                               Path(__file__).parents[1] / "scripts" / "kernel_census.py")
census = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(census)


def test_counts_computing_ops_not_views():
    a, b = torch.randn(5, 3), torch.randn(3, 4)
    with census.counting() as counts:
        c = (a @ b).view(-1)  # one product; a view launches nothing,
        c.view(4, 5).t().sum()  # nor does a transpose
        a.t().reshape(-1)  # but a reshape of a transposed tensor copies
    assert dict(counts) == {"aten.mm": 1, "aten.sum": 1, "aten.clone": 1}


def test_host_synchronisations_are_counted_apart_from_kernels():
    x = torch.randn(6)
    with census.counting() as counts:
        y = x * 2  # a kernel
        y.sum().item()  # a kernel, then a read to the host
        if (y > 0).any():  # three kernels, then a branch on the device's answer
            pass
        y.nonzero()  # an output whose size depends on the data
    assert dict(counts) == {"aten.mul": 1, "aten.sum": 1, "aten.gt": 1, "aten.any": 1, "sync._local_scalar_dense": 2,
                            "sync.nonzero": 1}
    assert census.kernels(counts) == 4


def test_a_triton_kernel_counts_once_and_its_insides_not_at_all():
    x, w, b = torch.randn(7, 33), torch.randn(33), torch.randn(33)
    with census.counting() as counts:
        kernels.layer_norm(x, w, b)
    # the interpreter runs the kernel with ATen ops of its own (copies in and out): none may be counted
    assert dict(counts) == {"triton._layer_norm_fwd_kernel": 1}


SMALL = dict(p=7, frac=1.0, batch_size=16, hidden=64, heads=4, ffn=64)  # batch > vocab (11): the CPU would project tables;
# heads of 16 and rows of 64, which the attention and LayerNorm kernels read in place (a padded head, or rows
# narrower than 64, would be copied first)


def test_a_step_is_counted_along_the_cuda_path(tmp_path):
    solo = census.step_census("modular", "triton", 1, str(tmp_path / "solo"), **SMALL)
    # nothing waits for the device: a CUDA graph captures the step whole
    assert not [name for name in solo if name.startswith("sync.")]
    assert solo["triton._fused_adamw_kernel"] == 1  # one optimiser launch for every parameter
    # post-LN's add and normalise ride in the products before them (kernels.matmul_layer_norm), and its backward
    # in the input gradient's product of the same projection (matmul_layer_norm_grad): no LayerNorm kernel of its
    # own either way; the weight-gradient launch adds up the backward's partial sums
    assert not {"triton._layer_norm_fwd_kernel", "triton._layer_norm_bwd_kernel"} & solo.keys()
    # the token and position rows: one kernel each way (no gather + add, no embedding_dense_backward, no
    # sum and slice_backward for the positions); the CPU's table projection would gather from three more
    assert solo["triton._embed_fwd_kernel"] == solo["triton._embed_bwd_kernel"] == 1
    assert not {"aten.embedding", "aten.embedding_dense_backward"} & solo.keys()
    # no copies: not of the meter's slices onto themselves (`sums[i] += x` assigns back through
    # __setitem__), nor of gradients into the optimiser's views: every gradient is written there
    assert "aten.copy_" not in solo and "aten._foreach_copy_" not in solo
    # the loss, its gradient and the meter: one launch (its last program reduces the partials, on the meter's
    # counter: no fill for one), and no product by the incoming gradient
    assert solo["triton._ce_kernel"] == 1 and "triton._ce_reduce_kernel" not in solo
    assert not {"aten._log_softmax", "aten.nll_loss_forward", "aten.argmax", "aten.stack"} & solo.keys()
    # the batch: one draw (indices, rows, offset) -- no index arithmetic, gathers or offset updates
    assert solo["triton._draw_kernel"] == 1
    assert not {"aten.index", "aten.index_select", "aten.remainder", "aten.remainder_"} & solo.keys()
    # every linear layer's weight and bias gradient (and the tied head's) in one launch: the backward's
    # products are the input gradients alone, and no bias is summed
    # apart; the LayerNorms' weights and biases are sums of their backward's partials, in that launch too
    assert solo["triton._weight_grad_kernel"] == 1 and "aten.sum" not in solo
    # the products are kernels.matmul, the FFN's GELU fused into its first layer each way, the k and v
    # projections one launch each way (matmul_fan; their input gradients summed by matmul's pair), and the query
    # at the readout row in k and v's launch forward (matmul_fan's third): of 7 layers, 5 launches forward and 6
    # for the input gradients
    assert solo["triton._matmul_kernel"] == 5 + 6
    assert not {"aten.mm", "aten.addmm", "aten.gelu", "aten.gelu_backward"} & solo.keys()
    # the backward's seed is made once, not filled every step, and the loss's backward takes it as one
    assert "aten.ones_like" not in solo and "aten.mul" not in solo
    # the attention kernels read the projections' heads where they are and write their gradients so:
    # no copy into (B, H, L, D) and back
    assert "aten.clone" not in solo
    # attention: the forward and one backward -- the readout row is one query block, so dQ's kernel writes dK and
    # dV too (no dK/dV launch, no preprocess launch for delta)
    assert sum(n for name, n in solo.items() if name.startswith("triton._attn")) == 2
    assert "triton._attn_bwd_dkdv" not in solo
    # the gradients that meet at one tensor (the layer's input from q, k, v and the residual; the FFN's input
    # from fc1 and its residual) are summed by the products that make them: no addition, no zero-filled
    # slice backward for the readout row
    summing = {"aten.add", "aten.add_", "aten.slice_backward", "aten.zeros", "aten.zero_", "aten.fill_"}
    assert not summing & solo.keys()
    pack = census.step_census("modular", "triton", 3, str(tmp_path / "pack"), **SMALL)
    assert not [name for name in pack if name.startswith("sync.")]
    assert pack["triton._matmul_kernel"] == 5 + 6  # one launch per product (q, k and v: one) for all runs
    assert not {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.gelu"} & pack.keys()
    assert "aten.ones_like" not in pack and "aten.sum" not in pack  # a seed per run's loss, no sum of the losses
    assert "aten.mul" not in pack and "aten.clone" not in pack
    # the gradients land in the optimiser's run-major buffer: no zero fill, no addition into it, no copy
    assert not {"aten.add", "aten.add_", "aten.zero_", "aten.copy_", "aten.slice_backward"} & pack.keys()
    assert pack["triton._packed_adamw_kernel"] + pack["triton._fused_adamw_kernel"] == 1
    assert pack["triton._ce_kernel"] == 1  # every run's loss at once
    assert pack["triton._draw_kernel"] == pack["triton._weight_grad_kernel"] == 1
    assert not {"triton._layer_norm_fwd_kernel", "triton._layer_norm_bwd_kernel"} & pack.keys()
    assert pack["triton._embed_fwd_kernel"] == pack["triton._embed_bwd_kernel"] == 1
    # and the switches are put back
    from grokfast_train.models import runs
    from grokfast_train.models.embedding_sum import EmbeddingSum

    assert not runs.one_launch(torch.zeros(1))
    assert EmbeddingSum.worth_it(torch.zeros(4, 3, dtype=torch.long), torch.zeros(2, 8))


def test_an_evaluation_is_the_steps_fused_forward_over_the_whole_test_set(tmp_path):
    # the modular preset's test set fits one chunk: no gathers, offsets or masks; the forward is the training
    # step's (5 products, the LayerNorms in two of them, the attention's one kernel), the loss's one launch, which
    # sets its sums in the result, and the weight norm one reduction over the optimiser's flat buffer, into the
    # result too: nothing copied or reset -- solo and packed
    for runs in (1, 2):
        counts, chunks = census.eval_census("modular", "triton", runs, str(tmp_path / f"r{runs}"), **SMALL)
        assert chunks == 1 and not [name for name in counts if name.startswith("sync.")]
        assert counts["triton._matmul_kernel"] == 5 and counts["triton._attn_fwd"] == 1
        assert counts["triton._ce_kernel"] == 1 and counts["aten.linalg_vector_norm"] == 1
        assert not {"aten.addmm", "aten.mm", "aten.bmm", "aten.gelu", "aten.index", "aten.lt", "aten.add_",
                    "aten.copy_", "aten.zero_", "aten.zeros", "triton._layer_norm_fwd_kernel"} & counts.keys(), runs
        assert census.kernels(counts) == 9, counts


def test_an_encoder_step_keeps_its_embedding_gradients_in_place_and_its_tanh_in_a_product(tmp_path):
    # IMDB's model (small): the embedding block's backward adds the word gradient into the optimiser's buffer
    # (zeroed there: the one fill) and its position, type and LayerNorm sums -- with zeros past the rows it
    # uses -- join the weight-gradient launch: no sums, pads or copies of its own, solo or packed
    small = dict(hidden=64, heads=4, ffn=64)
    for runs in (1, 2):
        counts = census.step_census("imdb", "triton", runs, str(tmp_path / f"r{runs}"), vocab=300, **small)
        assert not [name for name in counts if name.startswith("sync.")]
        assert counts["triton._emb_ln_fwd_kernel"] == counts["triton._emb_ln_bwd_kernel"] == 1
        assert counts["triton._weight_grad_kernel"] == 1 and counts["aten.zero_"] == 1
        # 8 layers (q, k, v, o, fc1, fc2, pooler, head): q, k and v inside the readout attention's one launch each
        # way (no key or value projected, no attention kernel), the other 5 a product each way
        assert counts["triton._readout_fwd"] == counts["triton._readout_bwd"] == 1
        assert not [name for name in counts if name.startswith("triton._attn")], runs
        assert counts["triton._matmul_kernel"] == 5 + 5
        assert not {"aten.sum", "aten.constant_pad_nd", "aten.copy_", "aten._foreach_copy_", "aten.zeros",
                    "aten.add", "aten.add_"} & counts.keys(), runs
        # the pooler's tanh rides in its product's launch each way, as the post-LN LayerNorms do in theirs
        assert not {"aten.tanh", "aten.tanh_backward", "triton._layer_norm_bwd_kernel"} & counts.keys(), runs
