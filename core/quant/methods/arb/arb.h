#pragma once
// ARB, the alternating refined binarization of ARB-LLM (Li et al., ICLR 2025;
// ../shared/docs/METHODS-BEYOND.md section 2): starting from the plain fit, each iteration sets the
// mean, then the scale(s), then the signs to their best values given the rest, so the squared
// error of the group never rises. Used per row and group by the block binarizer (method arb).
#include <cstdint>
#include <vector>

namespace pbllm {

/// x ~ alpha * B + mu, B = sign(x - mu) (+1 at 0).
struct OrderOneFit {
    double mu = 0.0, alpha = 0.0;
};
/// x ~ mu + alpha1 * B1 + alpha2 * B2, (B1, B2) the nearest of the four levels.
struct OrderTwoFit {
    double mu = 0.0, alpha1 = 0.0, alpha2 = 0.0;
};

/// ARB's iteration count everywhere.
constexpr int kArbIterations = 15;

/// Refines `fit` on the values `x` for `iterations` rounds. `errors`, when given, receives the
/// squared error before the first round and after each (iterations + 1 values). Alphas come out
/// non-negative.
OrderOneFit arb_refine_order1(const std::vector<float>& x, OrderOneFit fit, int iterations,
                              std::vector<double>* errors = nullptr);
OrderTwoFit arb_refine_order2(const std::vector<float>& x, OrderTwoFit fit, int iterations,
                              std::vector<double>* errors = nullptr);

/// The nearest of mu +- a1 +- a2 to x: (B1, B2) in {-1, +1}^2 (ties: the first in the order
/// ++, +-, -+, --).
void nearest_levels(double x, const OrderTwoFit& fit, double& b1, double& b2);

/// The squared error of a fit, each value at its nearest level (what the refinements reach).
double order1_error(const std::vector<float>& x, const OrderOneFit& fit);
double order2_error(const std::vector<float>& x, const OrderTwoFit& fit);

/// ARB-X: with the signs fixed (`b1`, `b2` = +-1 per value), refines the mean and the scale(s)
/// for `iterations` rounds in the metric of S: the error is r^T S_PP r, r = x - x_hat on the
/// group's positions P within the block (x_hat = 0 elsewhere), S (n x n, row-major) symmetric
/// positive semi-definite. Each round sets mu, then each scale, to its best value given the others
/// (a coordinate that S leaves undetermined keeps its value), so the error never rises. `errors`
/// as above. Scales may come out negative (the caller flips the signs).
OrderOneFit arbx_refine_order1(const std::vector<float>& x, const std::vector<double>& b1, const double* S,
                               std::int64_t n, const std::vector<std::int64_t>& positions, OrderOneFit fit,
                               int iterations, std::vector<double>* errors = nullptr);
OrderTwoFit arbx_refine_order2(const std::vector<float>& x, const std::vector<double>& b1,
                               const std::vector<double>& b2, const double* S, std::int64_t n,
                               const std::vector<std::int64_t>& positions, OrderTwoFit fit, int iterations,
                               std::vector<double>* errors = nullptr);
/// r^T S_PP r for r = x - (mu + alpha1 b1 + alpha2 b2) (b2 empty: order 1).
double metric_error(const std::vector<float>& x, const std::vector<double>& b1, const std::vector<double>& b2,
                    const double* S, std::int64_t n, const std::vector<std::int64_t>& positions, double mu,
                    double alpha1, double alpha2);

/// ARB-RC on one group of a block (rows x cols, row-major; `mask` marks the group's weights):
/// w_ij ~ sum_k a_ik c_jk B_ijk (order 1 or 2), a row scale and a column scale per order, no mean.
struct RowColumnFit {
    int order = 1;
    std::int64_t rows = 0, cols = 0;
    std::vector<double> a;             ///< (rows, order)
    std::vector<double> c;             ///< (cols, order)
    std::vector<signed char> b1, b2;   ///< (rows, cols): +-1 in the group, 0 outside (b2: order 2)
    double value(std::int64_t i, std::int64_t j) const;
};
/// Starts as ARB-LLM's code does (per order on the residual: a_i = mean |r| over the row,
/// c_j = mean |r / a_i| over the column, B = sign(r)), then `iterations` rounds: each scale in
/// turn is the least-squares best given the rest, then (order 2) the signs are the nearest of
/// +-a1 c1 +-a2 c2; the masked squared error never rises. `errors` as above.
RowColumnFit arb_rc_fit(const float* W, const bool* mask, std::int64_t rows, std::int64_t cols, int order,
                        int iterations, std::vector<double>* errors = nullptr);
double rc_error(const float* W, const bool* mask, const RowColumnFit& fit);

} // namespace pbllm
