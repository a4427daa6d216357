#pragma once
// Summary statistics of a weight tensor, as the layer tree and `pbllm info` show them, and the
// NaN/Inf scan every loader runs.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace pbllm {

struct TensorStats {
    std::int64_t count = 0;
    double mean = 0.0;
    double std = 0.0;      ///< population standard deviation
    double abs_max = 0.0;
    double kurtosis = 0.0; ///< excess kurtosis (0 for a Gaussian); heavy tails mean outliers
    double outlier_fraction = 0.0; ///< share of |w - mean| > 3 std
};

/// Computed in float64 over all elements, streamed in chunks of about a million elements, so a
/// memory-mapped F16/BF16 tensor of any size needs only a few MiB.
TensorStats tensor_stats(const at::Tensor& t);

/// NaN and Inf elements of a tensor.
struct NonFinite {
    std::int64_t count = 0;
    std::int64_t first = -1; ///< flat index of the first one; -1 when every element is finite
};

/// Reads F32, F16 and BF16 CPU tensors in place by their exponent bits (no converted copy), in
/// parallel; other dtypes and devices through ATen.
NonFinite find_nonfinite(const at::Tensor& t);

} // namespace pbllm
