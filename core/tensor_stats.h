#pragma once
// Summary statistics of a weight tensor, as the layer tree and `pbllm info` show them.
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

/// Computed in float64 over all elements.
TensorStats tensor_stats(const at::Tensor& t);

} // namespace pbllm
