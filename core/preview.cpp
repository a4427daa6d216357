#include "core/preview.h"

#include "core/bitpack.h"
#include "core/error.h"
#include "core/quantizers.h"
#include "core/saliency.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>

namespace pbllm {

LayerPreview::LayerPreview(std::string name, const at::Tensor& W, const at::Tensor& H, SaliencyMetric metric,
                           double percdamp)
    : name_(std::move(name)), metric_(metric)
{
    W_ = W.to(at::kCPU, at::kFloat).contiguous().clone();
    rows_ = W_.size(0);
    cols_ = W_.size(1);
    HessianFactors factors;
    if (H.defined()) {
        factors = factor_hessian(H, percdamp, name_);
        W_.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
        H_ = H.to(at::kCPU, at::kFloat).contiguous();
        hdiag_ = H_.diagonal().contiguous();
        weighted_norm2_ = (W_.pow(2) * hdiag_.unsqueeze(0)).sum().item<double>();
        hessian_norm_ = (at::matmul(W_, H_) * W_).sum().item<double>();
    } else if (metric != SaliencyMetric::Magnitude) {
        throw Error(name_ + ": the " + to_string(metric) + " metric needs calibration (a Hessian)");
    }
    scores_ = saliency_scores(W_, metric, H.defined() ? &factors : nullptr).contiguous();
    weight_norm2_ = W_.pow(2).sum().item<double>();
    const at::Tensor mn = std::get<0>(W_.min(1)), mx = std::get<0>(W_.max(1));
    row_min_.assign(mn.data_ptr<float>(), mn.data_ptr<float>() + rows_);
    row_max_.assign(mx.data_ptr<float>(), mx.data_ptr<float>() + rows_);
}

PreviewResult LayerPreview::preview(double ratio, int salient_bits, Binarizer binarizer, bool exact_hessian_error)
{
    const auto start = std::chrono::steady_clock::now();
    if (!(ratio >= 0.0 && ratio <= 1.0))
        throw Error(name_ + ": salient ratio " + std::to_string(ratio) + " is outside [0, 1]");
    if (!((salient_bits >= 2 && salient_bits <= 8) || salient_bits == 16))
        throw Error(name_ + ": salient bits " + std::to_string(salient_bits) + " must be 2..8 or 16");
    const std::int64_t n = rows_ * cols_;
    const std::int64_t k = static_cast<std::int64_t>(std::floor(ratio * static_cast<double>(n)));
    // Salient iff score > threshold (as salient_mask); k = n means everything.
    const float threshold = k <= 0 ? INFINITY : k >= n ? -1.0f : kth_largest_nonnegative(scores_.data_ptr<float>(), n, k);

    const float* w = W_.data_ptr<float>();
    const float* s = scores_.data_ptr<float>();
    const float* hd = hdiag_.defined() ? hdiag_.data_ptr<float>() : nullptr;
    const int maxq = salient_bits == 16 ? 0 : (1 << salient_bits) - 1;
    if (exact_hessian_error && H_.defined() && !dW_.defined())
        dW_ = at::empty({rows_, cols_}, at::kFloat);
    float* dw = exact_hessian_error && H_.defined() ? dW_.data_ptr<float>() : nullptr;

    const int threads = at::get_num_threads();
    std::vector<double> err2(threads, 0.0), herr2(threads, 0.0);
    std::vector<std::int64_t> salient(threads, 0);
    at::parallel_for(0, rows_, 16, [&](std::int64_t r0, std::int64_t r1) {
        const int t = at::get_thread_num();
        for (std::int64_t r = r0; r < r1; ++r) {
            const float* row = w + r * cols_;
            const float* sc = s + r * cols_;
            // Statistics of the non-salient entries (METHOD.md section 3), FP16 as stored.
            double sum = 0.0;
            std::int64_t count = 0;
            for (std::int64_t c = 0; c < cols_; ++c)
                if (!(sc[c] > threshold)) {
                    sum += row[c];
                    ++count;
                }
            double mu = 0.0;
            if (binarizer == Binarizer::Xnor) mu = count ? sum / count : 0.0;
            else if (binarizer == Binarizer::XnorCode) mu = sum / cols_;
            double dev = 0.0;
            for (std::int64_t c = 0; c < cols_; ++c) {
                const bool is_salient = sc[c] > threshold;
                if (binarizer == Binarizer::XnorCode)
                    dev += std::abs((is_salient ? 0.0 : row[c]) - mu);
                else if (!is_salient)
                    dev += std::abs(row[c] - mu);
            }
            const double alpha_d = binarizer == Binarizer::XnorCode ? dev / cols_ : (count ? dev / count : 0.0);
            const float mu_f = round_to_fp16(static_cast<float>(mu)), alpha = round_to_fp16(static_cast<float>(alpha_d));
            // Row grid of the salient weights (fit_row_grid's definition, per row).
            float xmin = std::min(row_min_[r], 0.0f), xmax = std::max(row_max_[r], 0.0f);
            if (xmin == xmax) {
                xmin = -1.0f;
                xmax = 1.0f;
            }
            const float scale = salient_bits == 16 ? 1.0f
                                                   : std::max(round_to_fp16((xmax - xmin) / static_cast<float>(maxq)),
                                                              std::ldexp(1.0f, -14));
            const float zero = salient_bits == 16 ? 0.0f
                                                  : std::fmin(std::fmax(std::nearbyint(-xmin / scale), 0.0f),
                                                              static_cast<float>(maxq));
            double e2 = 0.0, he2 = 0.0;
            std::int64_t nsal = 0;
            for (std::int64_t c = 0; c < cols_; ++c) {
                const float x = row[c];
                float q;
                if (sc[c] > threshold) {
                    ++nsal;
                    q = salient_bits == 16 ? round_to_fp16(x) : grid_value(grid_code(x, scale, zero, maxq), scale, zero);
                } else {
                    q = binary_value(binary_sign(x, mu_f), mu_f, alpha);
                }
                const double d = static_cast<double>(x) - q;
                e2 += d * d;
                if (hd)
                    he2 += d * d * hd[c];
                if (dw)
                    dw[r * cols_ + c] = static_cast<float>(d);
            }
            err2[t] += e2;
            herr2[t] += he2;
            salient[t] += nsal;
        }
    });
    PreviewResult res;
    double e2 = 0.0, he2 = 0.0;
    std::int64_t nsal = 0;
    for (int t = 0; t < threads; ++t) {
        e2 += err2[t];
        he2 += herr2[t];
        nsal += salient[t];
    }
    const double r = static_cast<double>(nsal) / static_cast<double>(n);
    res.salient_ratio = r;
    res.weight_error = weight_norm2_ > 0 ? std::sqrt(e2 / weight_norm2_) : 0.0;
    if (hd)
        res.hessian_error_diag = weighted_norm2_ > 0 ? he2 / weighted_norm2_ : 0.0;
    if (dw)
        res.hessian_error = hessian_norm_ > 0 ? (at::matmul(dW_, H_) * dW_).sum().item<double>() / hessian_norm_ : 0.0;
    const double b = salient_bits;
    res.headline_bits = b * r + (1.0 - r);
    res.bitmap_bits = res.headline_bits + 1.0;
    res.index_bits = res.headline_bits + expected_index_bits_per_weight(r);
    // What pack_linear will store: codes, signs, index, FP16 scale/mu/alpha and a uint8 zero per row.
    const double bytes = (static_cast<double>(nsal) * b + static_cast<double>(n - nsal)) / 8.0 +
                         expected_index_bits_per_weight(r) * static_cast<double>(n) / 8.0 +
                         static_cast<double>(rows_) * (salient_bits == 16 ? 4 : 7);
    res.estimated_bytes = static_cast<std::int64_t>(std::ceil(bytes));
    res.estimated_bits = 8.0 * static_cast<double>(res.estimated_bytes) / static_cast<double>(n);
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return res;
}

} // namespace pbllm
