#pragma once
// The Llama forward pass in libtorch: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU.
// Device-agnostic: runs wherever the model's tensors live.
#include "core/model.h"

#include <functional>
#include <vector>

namespace pbllm {

/// RoPE's inverse frequencies theta^(-2i/head_dim), i < head_dim / 2, in float32 as llama2.c and
/// Hugging Face compute them, then scaled as config.rope_scaling says.
std::vector<float> rope_inverse_frequencies(const ModelConfig& config);

/// cos and sin of RoPE angles pos * inverse frequency, each (max_len, head_dim / 2), float32 on
/// the CPU. Every forward path builds its tables here, so this is also where a sequence longer
/// than the model's sliding attention window is refused (never silently attended in full).
struct RopeTables {
    at::Tensor cos;
    at::Tensor sin;
};
RopeTables make_rope_tables(const ModelConfig& config, int max_len);

/// Sees every Linear's input (B, T, d_in) and output W x (B, T, d_out, before any bias) just after
/// the Linear is applied; Q/K/V and Gate/Up receive the same input tensor. Calibration accumulates Hessians from
/// the inputs; the layer-streamed quantizer the outputs' energy tr(W H W^T) as well.
using LinearObserver = std::function<void(LinearKind kind, const at::Tensor& input, const at::Tensor& output)>;

/// A weight in the precision the batched forward computes in: float32 on the CPU (libtorch 1.13
/// has no half-precision matmul there), as stored elsewhere. The same tensor when it already is.
at::Tensor for_compute(const at::Tensor& weight);
/// A decoder layer with every tensor for_compute: a model that keeps F16/BF16 weights mapped
/// holds one layer in float32 at a time, never the whole model.
DecoderLayer for_compute(const DecoderLayer& layer);
/// Bytes forward() holds in for_compute copies at most at once: one decoder layer and the output
/// head converted (0 for a float32 model).
std::int64_t for_compute_peak_bytes(const Model& model);

/// (B, T) int64 token ids -> (B, T, dim) embeddings. Throws Error for ids outside the vocabulary.
at::Tensor embed_tokens(const Model& model, const at::Tensor& tokens);
/// One decoder block on x (B, T, dim) at positions 0..T-1 with a causal mask.
at::Tensor decoder_layer_forward(const ModelConfig& config, const DecoderLayer& layer, const at::Tensor& x,
                                 const RopeTables& rope, const LinearObserver& observer = {});
/// Final RMSNorm and output head: (B, T, dim) -> (B, T, vocab) float32 logits.
at::Tensor output_logits(const Model& model, const at::Tensor& x);
/// All of the above, one layer for_compute at a time: (B, T) token ids -> (B, T, vocab) float32
/// logits. T <= max_seq_len.
at::Tensor forward(const Model& model, const at::Tensor& tokens);

/// RMSNorm computed in float32, returned in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, float eps);

} // namespace pbllm
