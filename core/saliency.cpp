#include "core/saliency.h"

#include "core/error.h"
#include "core/tensor_stats.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>
#include <cstring>

namespace pbllm {

HessianFactors factor_hessian(const at::Tensor& H_in, double percdamp, const std::string& what)
{
    if (H_in.dim() != 2 || H_in.size(0) != H_in.size(1))
        throw Error(what + ": Hessian must be square");
    const at::Tensor H = H_in.to(at::kDouble);
    if (!at::isfinite(H).all().item<bool>())
        throw Error(what + ": Hessian contains NaN/Inf (the calibration inputs were not finite)");
    HessianFactors f;
    // Only the diagonal changes (dead columns get 1, then the damping): it is handled on its own,
    // so no full-size float64 copy is made (a 7B down_proj's H is 0.97 GB in float64).
    at::Tensor diag = H.diagonal().clone();
    f.dead = diag == 0;
    diag.masked_fill_(f.dead, 1.0);
    const double mean_diag = diag.mean().item<double>();
    if (!(mean_diag > 0.0))
        throw Error(what + ": Hessian diagonal has a non-positive mean; it cannot come from real inputs");
    double damping = percdamp * mean_diag;
    // Factorised in float32 like the GPTQ reference (LAPACK's float64 is 2-3x slower here); the
    // accumulated Hessian stays float64 until this point, and the damped diagonal is summed in
    // float64 before rounding.
    for (int attempt = 0; attempt < 5; ++attempt) {
        at::Tensor damped = H.to(at::kFloat);
        damped.diagonal().copy_(diag + damping);
        auto [L, info] = at::linalg_cholesky_ex(damped);
        damped.reset(); // the factors below each take as much again
        if (info.item<int>() == 0) {
            at::Tensor inverse = at::cholesky_inverse(L);
            L.reset();
            auto [U, info2] = at::linalg_cholesky_ex(inverse, /*upper=*/true);
            if (info2.item<int>() == 0) {
                // The inverse goes before U is made row-major (ours hold at most two matrices;
                // ATen's steps add temporaries of their own).
                f.inverse_diag = inverse.diagonal().to(at::kFloat).contiguous();
                inverse.reset();
                f.upper_inverse = U.to(at::kFloat).contiguous();
                f.damping = damping;
                return f;
            }
        }
        f.note = what + ": Hessian not positive definite with damping " + std::to_string(damping) +
                 "; damping raised tenfold";
        damping *= 10.0;
    }
    throw Error(what + ": Hessian is not positive definite even with damping " + std::to_string(damping / 10.0) +
                " (" + std::to_string(1000 * percdamp) + "x the requested percdamp); the calibration data may be "
                "degenerate");
}

at::Tensor saliency_scores(const at::Tensor& W, SaliencyMetric metric, const HessianFactors* factors)
{
    const at::Tensor w = W.to(at::kFloat);
    if (metric == SaliencyMetric::Magnitude)
        return w.abs();
    if (!factors)
        throw Error("the " + to_string(metric) + " saliency metric needs calibration (a Hessian)");
    const at::Tensor d = metric == SaliencyMetric::Hessian ? factors->upper_inverse.diagonal() : factors->inverse_diag;
    return w.pow(2) / d.pow(2).unsqueeze(0);
}

namespace {

std::uint32_t bits_of(const float* v, std::int64_t i)
{
    std::uint32_t u;
    std::memcpy(&u, v + i, 4);
    return u;
}

/// Histogram of (u >> shift) & mask over the elements whose u >> (shift + width) equals prefix
/// (all elements when prefix_shift is 32), in per-thread L1-sized tables.
std::vector<std::int64_t> digit_histogram(const float* v, std::int64_t n, int shift, int width, int prefix_shift,
                                          std::uint32_t prefix)
{
    const std::size_t bins = std::size_t(1) << width;
    const int threads = at::get_num_threads();
    // One extra bin per table takes the elements outside the prefix: counting them branch-free
    // avoids a mispredicted branch per element when about half of them match.
    std::vector<std::vector<std::int64_t>> local(static_cast<std::size_t>(threads), std::vector<std::int64_t>(bins + 1, 0));
    at::parallel_for(0, n, 1 << 16, [&](std::int64_t lo, std::int64_t hi) {
        std::int64_t* h = local[static_cast<std::size_t>(at::get_thread_num())].data();
        const std::uint32_t mask = static_cast<std::uint32_t>(bins - 1);
        if (prefix_shift >= 32) {
            for (std::int64_t i = lo; i < hi; ++i)
                ++h[(bits_of(v, i) >> shift) & mask];
        } else {
            for (std::int64_t i = lo; i < hi; ++i) {
                const std::uint32_t u = bits_of(v, i);
                ++h[(u >> prefix_shift) == prefix ? (u >> shift) & mask : bins];
            }
        }
    });
    std::vector<std::int64_t> total(bins, 0);
    for (const auto& h : local)
        for (std::size_t b = 0; b < bins; ++b)
            total[b] += h[b];
    return total;
}

/// Highest bin b with remaining < counts[b] after subtracting the bins above it.
std::uint32_t pick_bin(const std::vector<std::int64_t>& counts, std::int64_t& remaining)
{
    for (std::size_t b = counts.size(); b-- > 0;) {
        if (remaining < counts[b])
            return static_cast<std::uint32_t>(b);
        remaining -= counts[b];
    }
    return 0;
}

} // namespace

TopKSelector::TopKSelector(const float* values, std::int64_t n)
    : values_(values), n_(n), top_(digit_histogram(values, n, 21, 11, 32, 0))
{
}

float TopKSelector::kth_largest(std::int64_t k) const
{
    std::int64_t remaining = k;
    const std::uint32_t b1 = pick_bin(top_, remaining);
    const std::uint32_t b2 = pick_bin(digit_histogram(values_, n_, 10, 11, 21, b1), remaining);
    const std::uint32_t b3 = pick_bin(digit_histogram(values_, n_, 0, 10, 10, (b1 << 11) | b2), remaining);
    const std::uint32_t u = (b1 << 21) | (b2 << 10) | b3;
    float out;
    std::memcpy(&out, &u, 4);
    return out;
}

float kth_largest_nonnegative(const float* values, std::int64_t n, std::int64_t k)
{
    return TopKSelector(values, n).kth_largest(k);
}

at::Tensor salient_mask(const at::Tensor& scores_in, double ratio, int group_cols)
{
    const at::Tensor scores = scores_in.to(at::kFloat).contiguous();
    const std::int64_t rows = scores.size(0), cols = scores.size(1);
    const std::int64_t width = group_cols > 0 ? group_cols : cols;
    at::Tensor mask = at::zeros({rows, cols}, at::kBool);
    for (std::int64_t start = 0; start < cols; start += width) {
        const std::int64_t w = std::min(width, cols - start);
        const at::Tensor part = group_cols > 0 ? scores.narrow(1, start, w).contiguous() : scores;
        const std::int64_t n = part.numel();
        const std::int64_t k = static_cast<std::int64_t>(std::floor(ratio * static_cast<double>(n)));
        if (k <= 0)
            continue;
        if (k >= n) {
            mask.narrow(1, start, w).fill_(true);
            continue;
        }
        const float threshold = kth_largest_nonnegative(part.data_ptr<float>(), n, k);
        mask.narrow(1, start, w).copy_(part > threshold);
    }
    return mask;
}

Histogram histogram(const at::Tensor& values, int bins)
{
    Histogram h;
    if (values.numel() == 0 || bins <= 0)
        return h;
    // In float64 chunks: a 4096 x 11008 mapped F16 Linear needs a few MiB, not a float64 copy
    // and a bin index per element (1 GB).
    h.lo = INFINITY;
    h.hi = -INFINITY;
    for_each_float64_chunk(values, [&](const at::Tensor& v) {
        const auto [mn, mx] = at::aminmax(v);
        h.lo = std::min(h.lo, mn.item<double>());
        h.hi = std::max(h.hi, mx.item<double>());
    });
    if (h.hi == h.lo)
        h.hi = h.lo + 1.0;
    at::Tensor counts = at::zeros({bins}, at::kLong);
    for_each_float64_chunk(values, [&](const at::Tensor& v) {
        const at::Tensor idx = ((v - h.lo) / (h.hi - h.lo) * bins).floor().clamp(0, bins - 1).to(at::kLong);
        counts += at::bincount(idx, {}, bins);
    });
    h.counts.assign(counts.data_ptr<std::int64_t>(), counts.data_ptr<std::int64_t>() + bins);
    return h;
}

SaliencyStats saliency_stats(const std::string& name, const at::Tensor& W_in, const at::Tensor* H, SaliencyMetric metric,
                             double ratio, double percdamp, int bins)
{
    SaliencyStats s;
    s.name = name;
    s.metric = metric;
    s.requested_ratio = ratio;
    at::Tensor W = W_in.to(at::kFloat).clone();
    s.rows = W.size(0);
    s.cols = W.size(1);
    HessianFactors factors;
    if (H) {
        factors = factor_hessian(*H, percdamp, name);
        W.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
        s.dead_columns = factors.dead.sum().item<std::int64_t>();
        s.hessian_trace = H->to(at::kDouble).trace().item<double>();
    }
    const at::Tensor scores = saliency_scores(W, metric, H ? &factors : nullptr);
    const at::Tensor mask = salient_mask(scores, ratio);
    const std::int64_t n = W.numel();
    const std::int64_t k = static_cast<std::int64_t>(std::floor(ratio * static_cast<double>(n)));
    if (k > 0 && k < n)
        s.threshold = kth_largest_nonnegative(scores.contiguous().data_ptr<float>(), n, k);
    s.achieved_ratio = mask.to(at::kDouble).mean().item<double>();
    s.weights = histogram(W_in, bins);
    const at::Tensor positive = scores.flatten().masked_select(scores.flatten() > 0);
    s.log10_scores = histogram(at::log10(positive.to(at::kDouble)), bins);
    const at::Tensor per_row = mask.sum(1), per_col = mask.sum(0);
    s.salient_per_row.assign(per_row.data_ptr<std::int64_t>(), per_row.data_ptr<std::int64_t>() + s.rows);
    s.salient_per_column.assign(per_col.data_ptr<std::int64_t>(), per_col.data_ptr<std::int64_t>() + s.cols);
    s.max_row_share = per_row.max().item<double>() / static_cast<double>(s.cols);
    s.max_column_share = per_col.max().item<double>() / static_cast<double>(s.rows);
    const TensorStats ts = tensor_stats(W_in);
    s.kurtosis = ts.kurtosis;
    s.outliers = static_cast<std::int64_t>(std::llround(ts.outlier_fraction * static_cast<double>(ts.count)));
    return s;
}

} // namespace pbllm
