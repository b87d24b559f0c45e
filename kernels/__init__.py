"""Fused Triton kernels for small-transformer training, each with its pure-PyTorch reference.

Imports only torch and triton. CUDA tensors run Triton; CPU tensors run the reference (or the
Triton kernel itself under ``TRITON_INTERPRET=1``). See kernels/README.md.
"""

from .adamw import FusedAdamW, adamw_reference_step
from .packed_adamw import PackedAdamW
from .fused_attention import attention, attention_reference
from .init import rescale_, scaled_init_, scaled_init_reference_
from .fused_layer_norm import layer_norm, layer_norm_backward, layer_norm_backward_reference, layer_norm_reference
from .fused_embedding import (EmbeddingGradParts, embedding_layer_norm, embedding_layer_norm_backward,
                              embedding_layer_norm_forward, embedding_layer_norm_reference)
from .fused_cross_entropy import cross_entropy, cross_entropy_reference, unit_seed
from .batch_draw import draw_batch, draw_batch_reference
from .weight_grads import WeightGrad, linear_weight_grads, linear_weight_grads_reference
from .token_embedding import (token_position_embedding, token_position_embedding_backward,
                              token_position_embedding_backward_reference, token_position_embedding_reference)
from .matmul import (MAX_NORM_N, matmul, matmul_act_grad, matmul_act_grad_reference, matmul_fan, matmul_fits_fan,
                     matmul_fits_pair, matmul_layer_norm, matmul_layer_norm_grad, matmul_layer_norm_grad_reference,
                     matmul_layer_norm_reference, matmul_reference)
from .readout_attention import (readout_attention_backward, readout_attention_backward_reference,
                                readout_attention_forward, readout_attention_forward_reference)
from ._pdl import pdl_enabled, set_pdl

__all__ = [
    "attention", "attention_reference",
    "FusedAdamW", "adamw_reference_step", "PackedAdamW",
    "scaled_init_", "scaled_init_reference_", "rescale_",
    "layer_norm", "layer_norm_reference", "layer_norm_backward", "layer_norm_backward_reference",
    "embedding_layer_norm", "embedding_layer_norm_reference", "embedding_layer_norm_forward",
    "embedding_layer_norm_backward", "EmbeddingGradParts",
    "cross_entropy", "cross_entropy_reference", "unit_seed",
    "draw_batch", "draw_batch_reference",
    "WeightGrad", "linear_weight_grads", "linear_weight_grads_reference",
    "token_position_embedding", "token_position_embedding_reference", "token_position_embedding_backward",
    "token_position_embedding_backward_reference",
    "matmul", "matmul_reference", "matmul_act_grad", "matmul_act_grad_reference", "matmul_fan", "matmul_fits_fan",
    "matmul_fits_pair",
    "matmul_layer_norm", "matmul_layer_norm_reference", "matmul_layer_norm_grad", "matmul_layer_norm_grad_reference",
    "MAX_NORM_N",
    "readout_attention_forward", "readout_attention_forward_reference", "readout_attention_backward",
    "readout_attention_backward_reference",
    "set_pdl", "pdl_enabled",
]
