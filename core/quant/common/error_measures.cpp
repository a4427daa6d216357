#include "core/quant/common/error_measures.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace pbllm {
namespace {

/// Rows per chunk: about a million weights.
std::int64_t chunk_rows(std::int64_t cols) { return std::max<std::int64_t>(1, (std::int64_t(1) << 20) / cols); }

} // namespace

ErrorSums error_sums(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& dead)
{
    const std::int64_t rows = Q.size(0), cols = Q.size(1), chunk = chunk_rows(cols);
    ErrorSums s;
    s.per_column = at::zeros({cols}, at::kDouble);
    for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const std::int64_t n = std::min(chunk, rows - r0);
        at::Tensor w = W.narrow(0, r0, n).to(at::kCPU, at::kDouble, /*non_blocking=*/false, /*copy=*/true);
        if (dead.defined())
            w.masked_fill_(dead.unsqueeze(0), 0.0);
        const at::Tensor d = w - Q.narrow(0, r0, n).to(at::kDouble);
        s.weights += w.pow(2).sum().item<double>();
        s.per_column += d.pow(2).sum(0);
    }
    s.error = s.per_column.sum().item<double>();
    return s;
}

double hessian_energy(const at::Tensor& A, const at::Tensor& Hf)
{
    return (at::matmul(A, Hf) * A).sum(at::kDouble).item<double>();
}

double hessian_error_energy(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& dead, const at::Tensor& Hf,
                            double* weights_energy)
{
    const std::int64_t rows = W.size(0), cols = W.size(1), chunk = chunk_rows(cols);
    double error = 0.0, weights = 0.0;
    for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const std::int64_t n = std::min(chunk, rows - r0);
        at::Tensor w = W.narrow(0, r0, n).to(at::kCPU, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
        if (dead.defined())
            w.masked_fill_(dead.unsqueeze(0), 0.0f);
        if (Q.defined())
            error += hessian_energy(w - Q.narrow(0, r0, n), Hf);
        if (weights_energy)
            weights += hessian_energy(w, Hf);
    }
    if (weights_energy)
        *weights_energy = weights;
    return error;
}

} // namespace pbllm
