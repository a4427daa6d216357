#include "core/tensor_stats.h"

#include <ATen/ATen.h>

namespace pbllm {

TensorStats tensor_stats(const at::Tensor& t)
{
    TensorStats s;
    const at::Tensor x = t.to(at::kCPU, at::kDouble).flatten();
    s.count = x.numel();
    if (s.count == 0)
        return s;
    s.mean = x.mean().item<double>();
    const at::Tensor centered = x - s.mean;
    const double var = centered.pow(2).mean().item<double>();
    s.std = std::sqrt(var);
    s.abs_max = x.abs().max().item<double>();
    if (var > 0) {
        s.kurtosis = centered.pow(4).mean().item<double>() / (var * var) - 3.0;
        s.outlier_fraction = (centered.abs() > 3.0 * s.std).to(at::kDouble).mean().item<double>();
    }
    return s;
}

} // namespace pbllm
