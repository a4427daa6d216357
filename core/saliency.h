#pragma once
// Salient-weight selection (METHOD.md section 1): scores, the damped inverse-Hessian factors they
// need, linear-time thresholds, and the statistics a person wants to look at.
#include "core/quant_config.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace pbllm {

/// What GPTQ and the Hessian saliency scores need from H = 2/N sum x x^T.
struct HessianFactors {
    at::Tensor upper_inverse; ///< U, upper Cholesky factor of (H + lambda I)^-1, float32 (d_in, d_in)
    at::Tensor inverse_diag;  ///< diag of (H + lambda I)^-1, float32 (d_in)
    at::Tensor dead;          ///< bool (d_in): columns whose input never fired (H_jj = 0)
    double damping = 0.0;     ///< lambda actually used
    std::string note;         ///< set when the damping had to be raised to factor H
};

/// Dead columns get H_jj = 1, then H += percdamp * mean(diag H) * I. If the Cholesky
/// factorisation fails, the damping is raised tenfold (up to 4 times) and `note` says so; if it
/// still fails, or H holds NaN/Inf, Error names `what`.
HessianFactors factor_hessian(const at::Tensor& H, double percdamp, const std::string& what);

/// Scores of W (d_out, d_in), higher = more salient. Hessian metrics need `factors`.
at::Tensor saliency_scores(const at::Tensor& W, SaliencyMetric metric, const HessianFactors* factors);

/// The top `ratio` of `scores` per column group (group_cols 0 = the whole matrix): threshold t
/// is the (floor(ratio * n) + 1)-th largest score and the mask is score > t, so ties can only make
/// it smaller (as the authors' code). Linear time (radix selection on the float bits).
at::Tensor salient_mask(const at::Tensor& scores, double ratio, int group_cols = 0);

/// k-th largest (0-based) of non-negative floats in linear time, without sorting or copying:
/// radix selection over the IEEE bit patterns (which order like the values) in three passes of
/// 11, 11 and 10 bits, whose 2048-bin histograms stay in L1. The first pass does not depend on k
/// and is done once at construction, so repeated queries (slider previews) cost two passes.
class TopKSelector {
public:
    TopKSelector(const float* values, std::int64_t n);
    float kth_largest(std::int64_t k) const;

private:
    const float* values_;
    std::int64_t n_;
    std::vector<std::int64_t> top_; ///< histogram of bits 31..21
};

/// One-off selection: TopKSelector(values, n).kth_largest(k).
float kth_largest_nonnegative(const float* values, std::int64_t n, std::int64_t k);

struct Histogram {
    double lo = 0.0, hi = 0.0;       ///< range of the bins
    std::vector<std::int64_t> counts;
};
Histogram histogram(const at::Tensor& values, int bins);

/// What the Distributions page and `pbllm saliency` show for one Linear.
struct SaliencyStats {
    std::string name;
    std::int64_t rows = 0, cols = 0;
    SaliencyMetric metric = SaliencyMetric::Hessian;
    double requested_ratio = 0.0;
    double achieved_ratio = 0.0;
    double threshold = 0.0;            ///< score threshold (whole matrix)
    Histogram weights;                 ///< of W
    Histogram log10_scores;            ///< of log10(score) over positive scores
    std::vector<std::int64_t> salient_per_row;
    std::vector<std::int64_t> salient_per_column;
    double max_row_share = 0.0;        ///< largest fraction of salient weights in one row
    double max_column_share = 0.0;     ///< largest fraction of salient weights in one column
    double kurtosis = 0.0;             ///< excess kurtosis of W
    std::int64_t outliers = 0;         ///< |w - mean| > 3 std
    std::int64_t dead_columns = 0;
    double hessian_trace = 0.0;        ///< tr H (0 without a Hessian)
};

SaliencyStats saliency_stats(const std::string& name, const at::Tensor& W, const at::Tensor* H, SaliencyMetric metric,
                             double ratio, double percdamp = 0.01, int bins = 64);

} // namespace pbllm
