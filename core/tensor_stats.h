#pragma once
// Summary statistics of a weight tensor, as the layer tree and `pbllm info` show them, and the
// NaN/Inf scan every loader runs.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace pbllm {

struct TensorStats {
    std::int64_t count = 0;
    double mean = 0.0;
    double std = 0.0;      ///< population standard deviation
    double abs_max = 0.0;
    double min = 0.0, max = 0.0;
    double kurtosis = 0.0; ///< excess kurtosis (0 for a Gaussian); heavy tails mean outliers
    double outlier_fraction = 0.0; ///< share of |w - mean| > 3 std
    std::int64_t nonfinite = 0;    ///< NaN/Inf elements (the other figures are then meaningless)
    /// When asked for: counts in equal bins over [min, max] (histogram()'s binning).
    std::vector<std::int64_t> histogram;
};

/// Accumulated in float64 over all elements, read in place (F32, F16, BF16, F64; other dtypes
/// are converted first) in three parallel passes over chunks of a million elements, combined in
/// chunk order so the result does not depend on the thread count. A mapped 4096 x 11008 F16
/// Linear takes about 0.1 s and no memory beyond the bins.
TensorStats tensor_stats(const at::Tensor& t, int histogram_bins = 0);

/// Calls fn(chunk) for consecutive float64 chunks (about a million elements) of t's elements in
/// flat order: whole-tensor statistics of a mapped F16/BF16 tensor without a float64 copy.
void for_each_float64_chunk(const at::Tensor& t, const std::function<void(const at::Tensor&)>& fn);

/// NaN and Inf elements of a tensor.
struct NonFinite {
    std::int64_t count = 0;
    std::int64_t first = -1; ///< flat index of the first one; -1 when every element is finite
};

/// Reads F32, F16 and BF16 CPU tensors in place by their exponent bits (no converted copy), in
/// parallel; other dtypes and devices through ATen.
NonFinite find_nonfinite(const at::Tensor& t);

} // namespace pbllm
