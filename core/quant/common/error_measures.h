#pragma once
// How far a quantized Linear Q is from its weights W, measured the same way by every method:
// in float64, in chunks of rows, so no (rows x cols) temporary beside W and Q (a 7B down_proj's
// would be 180 MB each).
#include <ATen/core/Tensor.h>

namespace pbllm {

/// Sums over dW = W - Q: ||dW||^2, ||W||^2 and dW's squared column norms, with W's `dead`
/// columns (when defined) zeroed.
struct ErrorSums {
    double error = 0.0, weights = 0.0;
    at::Tensor per_column; ///< float64 (cols)
};
ErrorSums error_sums(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& dead);

/// tr(A H A^T) with one (rows x cols x cols) product, in float32 with a float64 sum.
double hessian_energy(const at::Tensor& A, const at::Tensor& Hf);

/// tr(dW H dW^T) for dW = W - Q (W's `dead` columns zeroed; 0 when Q is undefined), and
/// tr(W H W^T) into `weights_energy` when it is not null; Hf float32. One GEMM per chunk of rows
/// and product.
double hessian_error_energy(const at::Tensor& W, const at::Tensor& Q, const at::Tensor& dead, const at::Tensor& Hf,
                            double* weights_energy = nullptr);

} // namespace pbllm
