#pragma once
// Quantized Linears run from their bits: the runtime layout built from a packed file's arrays,
// and the threaded matrix-vector and batched products over it (core/kernels/packed_matvec.h).
#include "core/kernels/packed_matvec.h"
#include "core/packed_checkpoint.h"

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace pbllm {

using PackedWeightsPtr = std::shared_ptr<const kernels::PackedWeights>;

/// "" when the packed kernels can run `p`; otherwise why not (parameter groups that are not
/// whole 128-column blocks), for a message that says the Linear runs dequantized instead.
std::string packed_kernels_unsupported(const PackedLinear& p);

/// The runtime layout of `p`, every value checked as it is decoded (index, code ranges,
/// positive finite scales, finite statistics). Error names `what` and the inconsistency.
PackedWeightsPtr build_packed_weights(const PackedLinear& p, const std::string& what);

/// y = W x (rows floats) with rows split between threads by equal work (dense words + salient
/// entries). `scratch` holds the prepared input between calls; `reuse_input`: it already holds x
/// prepared for a Linear of the same width and groups (Q, K and V read the same x).
void packed_matvec(const kernels::PackedWeights& W, const float* x, float* y, kernels::PackedInput& scratch,
                   bool reuse_input = false);

/// x (..., cols) float32 on the CPU -> (..., rows): one token by the matvec kernel; more tokens
/// by unpacking a tile of rows once into float32 and multiplying it with all of them.
at::Tensor packed_linear_forward(const kernels::PackedWeights& W, const at::Tensor& x);

/// Bits per weight the runtime layout keeps in memory.
double resident_bits_per_weight(const kernels::PackedWeights& W);

/// A Linear's weights as a float32 (rows, cols) tensor: the stored tensor, or the packed layout
/// dequantized (for weight statistics and previews of a model opened packed).
at::Tensor dense_linear_weight(const DecoderLayer& layer, LinearKind kind);

/// Bytes of every weight the model holds in memory: its tensors and its packed Linears.
std::int64_t resident_weight_bytes(const Model& model);

/// q.model with every quantized Linear kept packed for the packed kernels (tensors undefined):
/// a model quantized in this process runs from its bits as a reopened file does. Linears the
/// packed kernels cannot run keep their dequantized tensor.
Model packed_runtime_model(const QuantizedModel& q);

} // namespace pbllm
