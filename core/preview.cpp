#include "core/preview.h"

#include "core/bitpack.h"
#include "core/error.h"
#include "core/packed_checkpoint.h"
#include "core/quant/registry.h"
#include "core/quant/settings.h"
#include "core/quantizers.h"
#include "core/saliency.h"
#include "core/simd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

namespace pbllm {

namespace {

struct RowError {
    double err2 = 0.0, herr2 = 0.0;
    std::int64_t salient = 0;
};

/// One row of the preview: binarization statistics over the non-salient entries (FP16, as
/// stored), the row grid, and the squared error, in branch-free loops the compiler vectorises.
PBLLM_MULTIVERSION
RowError preview_row(const float* __restrict w, const float* __restrict sc, const float* __restrict hd,
                     std::int64_t cols, float threshold, Binarizer binarizer, int bits, float row_min, float row_max,
                     float* __restrict dw)
{
    float sum = 0.0f, count = 0.0f;
#pragma omp simd reduction(+ : sum, count)
    for (std::int64_t c = 0; c < cols; ++c) {
        const float keep = sc[c] > threshold ? 0.0f : 1.0f;
        sum += keep * w[c];
        count += keep;
    }
    float mu = 0.0f;
    if (binarizer == Binarizer::Xnor)
        mu = count > 0 ? sum / count : 0.0f;
    else if (binarizer == Binarizer::XnorCode)
        mu = sum / static_cast<float>(cols);
    float dev = 0.0f;
    if (binarizer == Binarizer::XnorCode) {
#pragma omp simd reduction(+ : dev)
        for (std::int64_t c = 0; c < cols; ++c)
            dev += std::fabs((sc[c] > threshold ? 0.0f : w[c]) - mu);
    } else {
        // Salient entries contribute |mu - mu| = 0: a select on the operand, not on the sum,
        // keeps the loop vectorisable.
#pragma omp simd reduction(+ : dev)
        for (std::int64_t c = 0; c < cols; ++c)
            dev += std::fabs((sc[c] > threshold ? mu : w[c]) - mu);
    }
    const float alpha_raw = binarizer == Binarizer::XnorCode ? dev / static_cast<float>(cols) : (count > 0 ? dev / count : 0.0f);
    const float m = round_to_fp16(mu), a = round_to_fp16(alpha_raw);
    // The salient row grid (fit_row_grid's definition); 16 bits means FP16 values instead.
    const int maxq = bits == 16 ? 0 : (1 << bits) - 1;
    float xmin = std::min(row_min, 0.0f), xmax = std::max(row_max, 0.0f);
    if (xmin == xmax) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    const float scale = bits == 16 ? 1.0f : std::max(round_to_fp16((xmax - xmin) / static_cast<float>(maxq)), std::ldexp(1.0f, -14));
    const float zero = bits == 16 ? 0.0f : std::fmin(std::fmax(std::nearbyint(-xmin / scale), 0.0f), static_cast<float>(maxq));
    const float fmaxq = static_cast<float>(maxq);
    const bool fp16_salient = bits == 16;
    // The error of one weight: selects only (grid_code's clamp without std::fmin/fmax calls,
    // which would stop vectorisation; weights are finite, so NaN handling is moot).
    auto error_of = [=](std::int64_t c) {
        const float x = w[c];
        const float unclamped = round_half_even(x / scale) + zero;
        const float code = unclamped < 0.0f ? 0.0f : (unclamped > fmaxq ? fmaxq : unclamped);
        const float qs = fp16_salient ? round_to_fp16(x) : scale * (code - zero);
        const float qb = x - m >= 0.0f ? m + a : m - a;
        return x - (sc[c] > threshold ? qs : qb);
    };
    float e2 = 0.0f, he2 = 0.0f, nsal = 0.0f;
    if (dw) { // the exact Hessian error follows with a GEMM; this loop is not the cost
        for (std::int64_t c = 0; c < cols; ++c)
            dw[c] = error_of(c);
        for (std::int64_t c = 0; c < cols; ++c) {
            e2 += dw[c] * dw[c];
            he2 += hd ? dw[c] * dw[c] * hd[c] : 0.0f;
            nsal += sc[c] > threshold ? 1.0f : 0.0f;
        }
    } else if (hd) {
#pragma omp simd reduction(+ : e2, he2, nsal)
        for (std::int64_t c = 0; c < cols; ++c) {
            const float d = error_of(c);
            e2 += d * d;
            he2 += d * d * hd[c];
            nsal += sc[c] > threshold ? 1.0f : 0.0f;
        }
    } else {
#pragma omp simd reduction(+ : e2, nsal)
        for (std::int64_t c = 0; c < cols; ++c) {
            const float d = error_of(c);
            e2 += d * d;
            nsal += sc[c] > threshold ? 1.0f : 0.0f;
        }
    }
    return {e2, he2, static_cast<std::int64_t>(nsal)};
}

} // namespace

LayerPreview::LayerPreview(std::string name, const at::Tensor& W, const at::Tensor& H, SaliencyMetric metric,
                           const PreviewOptions& options)
    : name_(std::move(name)), metric_(metric)
{
    if (W.dim() != 2)
        throw Error(name_ + ": a Linear weight must be 2-D");
    full_rows_ = W.size(0);
    const std::int64_t sample_rows =
        options.max_weights > 0 ? std::clamp<std::int64_t>(options.max_weights / std::max<std::int64_t>(W.size(1), 1), 8, full_rows_)
                                : full_rows_;
    if (sample_rows < full_rows_) {
        // 16 evenly spaced runs of consecutive rows: index_select reads only their pages of a
        // mapped tensor, and a run is one sequential read when the file is not in the page cache
        // (single rows spread over a 7B model cost a random read each: 30 s from a cold disk).
        const std::int64_t runs = std::min<std::int64_t>(16, sample_rows);
        std::vector<std::int64_t> rows;
        rows.reserve(static_cast<std::size_t>(sample_rows));
        for (std::int64_t b = 0; b < runs; ++b) {
            const std::int64_t length = sample_rows / runs + (b < sample_rows % runs ? 1 : 0);
            const std::int64_t first = b * full_rows_ / runs;
            for (std::int64_t k = 0; k < length; ++k)
                rows.push_back(first + k);
        }
        W_ = W.index_select(0, at::tensor(rows, at::kLong)).to(at::kCPU, at::kFloat).contiguous();
    } else {
        W_ = W.to(at::kCPU, at::kFloat).contiguous().clone();
    }
    rows_ = W_.size(0);
    cols_ = W_.size(1);
    HessianFactors factors;
    if (H.defined()) {
        factors = factor_hessian(H, options.percdamp, name_);
        W_.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
        if (options.keep_hessian) {
            H_ = H.to(at::kCPU, at::kFloat).contiguous();
            hdiag_ = H_.diagonal().contiguous();
        } else {
            hdiag_ = H.diagonal().to(at::kCPU, at::kFloat).contiguous();
        }
        weighted_norm2_ = (W_.pow(2) * hdiag_.unsqueeze(0)).sum().item<double>();
    } else if (metric != SaliencyMetric::Magnitude) {
        throw Error(name_ + ": the " + to_string(metric) + " metric needs calibration (a Hessian)");
    }
    scores_ = saliency_scores(W_, metric, H.defined() ? &factors : nullptr).contiguous();
    selector_ = std::make_shared<TopKSelector>(scores_.data_ptr<float>(), scores_.numel());
    weight_norm2_ = W_.pow(2).sum().item<double>();
    const at::Tensor mn = std::get<0>(W_.min(1)), mx = std::get<0>(W_.max(1));
    row_min_.assign(mn.data_ptr<float>(), mn.data_ptr<float>() + rows_);
    row_max_.assign(mx.data_ptr<float>(), mx.data_ptr<float>() + rows_);
}

float LayerPreview::threshold_for(double ratio) const
{
    const std::int64_t n = rows_ * cols_;
    const std::int64_t k = static_cast<std::int64_t>(std::floor(ratio * static_cast<double>(n)));
    // Salient iff score > threshold (as salient_mask); k = n means everything.
    return k <= 0 ? INFINITY : k >= n ? -1.0f : selector_->kth_largest(k);
}

std::vector<float> LayerPreview::salient_density(double ratio, int out_rows, int out_cols) const
{
    if (out_rows <= 0 || out_cols <= 0)
        throw Error(name_ + ": heat map size must be positive");
    out_rows = static_cast<int>(std::min<std::int64_t>(out_rows, rows_));
    out_cols = static_cast<int>(std::min<std::int64_t>(out_cols, cols_));
    const float threshold = threshold_for(std::clamp(ratio, 0.0, 1.0));
    std::vector<float> density(static_cast<std::size_t>(out_rows) * out_cols, 0.0f);
    std::vector<std::int64_t> cells(density.size(), 0);
    const float* s = scores_.data_ptr<float>();
    for (std::int64_t r = 0; r < rows_; ++r) {
        const std::size_t base = static_cast<std::size_t>(r * out_rows / rows_) * out_cols;
        for (std::int64_t c = 0; c < cols_; ++c) {
            const std::size_t cell = base + static_cast<std::size_t>(c * out_cols / cols_);
            density[cell] += s[r * cols_ + c] > threshold ? 1.0f : 0.0f;
            ++cells[cell];
        }
    }
    for (std::size_t i = 0; i < density.size(); ++i)
        density[i] /= static_cast<float>(std::max<std::int64_t>(cells[i], 1));
    return density;
}

std::vector<double> LayerPreview::log10_score_histogram(int bins, double& lo, double& hi) const
{
    const at::Tensor positive = scores_.flatten().masked_select(scores_.flatten() > 0);
    std::vector<double> counts(static_cast<std::size_t>(std::max(bins, 1)), 0.0);
    lo = hi = 0.0;
    if (positive.numel() == 0)
        return counts;
    const Histogram h = histogram(at::log10(positive), bins);
    lo = h.lo;
    hi = h.hi;
    counts.assign(h.counts.begin(), h.counts.end());
    return counts;
}

PreviewResult LayerPreview::preview(double ratio, int salient_bits, Binarizer binarizer, bool exact_hessian_error)
{
    const auto start = std::chrono::steady_clock::now();
    if (!(ratio >= 0.0 && ratio <= 1.0))
        throw Error(name_ + ": salient ratio " + std::to_string(ratio) + " is outside [0, 1]");
    if (!((salient_bits >= 2 && salient_bits <= 8) || salient_bits == 16))
        throw Error(name_ + ": salient bits " + std::to_string(salient_bits) + " must be 2..8 or 16");
    const std::int64_t n = rows_ * cols_;
    const float threshold = threshold_for(ratio);

    const float* w = W_.data_ptr<float>();
    const float* s = scores_.data_ptr<float>();
    const float* hd = hdiag_.defined() ? hdiag_.data_ptr<float>() : nullptr;
    if (exact_hessian_error && H_.defined() && !dW_.defined())
        dW_ = at::empty({rows_, cols_}, at::kFloat);
    float* dw = exact_hessian_error && H_.defined() ? dW_.data_ptr<float>() : nullptr;

    const int threads = at::get_num_threads();
    std::vector<double> err2(threads, 0.0), herr2(threads, 0.0);
    std::vector<std::int64_t> salient(threads, 0);
    at::parallel_for(0, rows_, 16, [&](std::int64_t r0, std::int64_t r1) {
        const int t = at::get_thread_num();
        for (std::int64_t r = r0; r < r1; ++r) {
            const RowError e = preview_row(w + r * cols_, s + r * cols_, hd, cols_, threshold, binarizer, salient_bits,
                                           row_min_[r], row_max_[r], dw ? dw + r * cols_ : nullptr);
            err2[t] += e.err2;
            herr2[t] += e.herr2;
            salient[t] += e.salient;
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
    res.threshold = threshold;
    res.weight_error = weight_norm2_ > 0 ? std::sqrt(e2 / weight_norm2_) : 0.0;
    if (hd)
        res.hessian_error_diag = weighted_norm2_ > 0 ? he2 / weighted_norm2_ : 0.0;
    if (dw) {
        if (hessian_norm_ < 0)
            hessian_norm_ = (at::matmul(W_, H_) * W_).sum().item<double>();
        res.hessian_error = hessian_norm_ > 0 ? (at::matmul(dW_, H_) * dW_).sum().item<double>() / hessian_norm_ : 0.0;
    }
    const double b = salient_bits;
    res.headline_bits = b * r + (1.0 - r);
    res.bitmap_bits = res.headline_bits + 1.0;
    res.index_bits = res.headline_bits + expected_index_bits_per_weight(r);
    // What pack_linear will store for the whole matrix (a sample's ratio stands for all rows):
    // codes, signs, index, FP16 scale/mu/alpha and a uint8 zero per row.
    const double full_n = static_cast<double>(full_rows_) * static_cast<double>(cols_);
    const double salient_full = sampled() ? r * full_n : static_cast<double>(nsal);
    const double bytes = (salient_full * b + (full_n - salient_full)) / 8.0 + expected_index_bits_per_weight(r) * full_n / 8.0 +
                         static_cast<double>(full_rows_) * (salient_bits == 16 ? 4 : 7);
    res.estimated_bytes = static_cast<std::int64_t>(std::ceil(bytes));
    res.estimated_bits = 8.0 * static_cast<double>(res.estimated_bytes) / full_n;
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return res;
}

PreviewResult LayerPreview::preview_block_binary(const LayerQuantSettings& settings, int blocksize, double percdamp)
{
    const MethodInfo& m = method_info(settings.method);
    std::string key = std::to_string(blocksize) + " " + std::to_string(percdamp);
    for (const SettingInfo& info : layer_settings())
        if (m.reads(info.key))
            key += " " + info.format(info.get(settings));
    if (const auto hit = block_binary_results_.find(key); hit != block_binary_results_.end())
        return hit->second;
    const auto start = std::chrono::steady_clock::now();
    // The diagonal of H (the identity without calibration): each block quantized as the method
    // does, nothing carried into later blocks.
    const at::Tensor H = hdiag_.defined() ? at::diag(hdiag_.to(at::kDouble)) : at::eye(cols_, at::kDouble);
    GptqOptions o;
    o.blocksize = blocksize;
    o.percdamp = percdamp;
    o.measure_output_error = false;
    const QuantizedLinear q = quantize_linear(name_, W_, H, settings, o);
    const PackedLinear packed = pack_linear(q);
    const BitsPerWeight bits = bits_per_weight(std::vector<PackedLinear>{packed});
    PreviewResult res;
    res.salient_ratio = q.salient_ratio;
    res.threshold = 0.0f;
    res.weight_error = q.weight_error;
    if (hdiag_.defined() && weighted_norm2_ > 0)
        res.hessian_error_diag = ((W_ - q.dequantized).pow(2) * hdiag_.unsqueeze(0)).sum().item<double>() / weighted_norm2_;
    res.headline_bits = bits.headline;
    res.bitmap_bits = bits.with_bitmap;
    res.index_bits = bits.with_index;
    // A sample's bytes stand for the whole matrix in proportion to its rows.
    res.estimated_bytes = static_cast<std::int64_t>(
        std::ceil(static_cast<double>(packed.bytes()) * static_cast<double>(full_rows_) / static_cast<double>(rows_)));
    res.estimated_bits = 8.0 * static_cast<double>(res.estimated_bytes) / (static_cast<double>(full_rows_) * cols_);
    res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    block_binary_results_[key] = res;
    return res;
}

PreviewResult partial_binary_preview(LayerPreview& p, const LayerQuantSettings& s, int, double)
{
    PreviewResult r = p.preview(s.salient_ratio, s.salient_bits, s.binarizer);
    r.grid_bits = s.salient_bits;
    return r;
}

PreviewResult plain_grid_preview(LayerPreview& p, const LayerQuantSettings& s, int, double)
{
    PreviewResult r = p.preview(1.0, s.bits, s.binarizer);
    r.grid_bits = s.bits;
    return r;
}

PreviewResult block_binary_preview(LayerPreview& p, const LayerQuantSettings& s, int blocksize, double percdamp)
{
    PreviewResult r = p.preview_block_binary(s, blocksize, percdamp);
    r.grid_bits = 2; // a salient weight's two sign bits
    return r;
}

} // namespace pbllm
