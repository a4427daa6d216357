#pragma once
// ARB, the alternating refined binarization of ARB-LLM (Li et al., ICLR 2025;
// ../shared/docs/METHODS-BEYOND.md section 2): starting from the plain fit, each iteration sets the
// mean, then the scale(s), then the signs to their best values given the rest, so the squared
// error of the group never rises. Used per row and group by the block binarizer (method arb).
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

/// The squared error of a fit, each value at its nearest level (what the refinements reach).
double order1_error(const std::vector<float>& x, const OrderOneFit& fit);
double order2_error(const std::vector<float>& x, const OrderTwoFit& fit);

} // namespace pbllm
