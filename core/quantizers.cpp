#include "core/quantizers.h"

#include "core/error.h"

#include <ATen/ATen.h>

namespace pbllm {

at::Tensor round_to_fp16(const at::Tensor& t) { return t.to(at::kHalf).to(at::kFloat); }

namespace {

/// Columns [begin, end) of group g.
std::int64_t groups_of(std::int64_t cols, int group_cols)
{
    return group_cols > 0 ? (cols + group_cols - 1) / group_cols : 1;
}

} // namespace

RowGrid fit_row_grid(const at::Tensor& W, int bits, int group_cols)
{
    if (bits < 2 || bits > 8)
        throw Error("grid bit-width " + std::to_string(bits) + " must be 2..8");
    const at::Tensor w = W.to(at::kFloat);
    const std::int64_t rows = w.size(0), cols = w.size(1);
    const std::int64_t groups = groups_of(cols, group_cols);
    const std::int64_t width = group_cols > 0 ? group_cols : cols;
    RowGrid g;
    g.bits = bits;
    g.scale = at::empty({rows, groups}, at::kFloat);
    g.zero = at::empty({rows, groups}, at::kFloat);
    const float maxq = static_cast<float>((1 << bits) - 1);
    for (std::int64_t k = 0; k < groups; ++k) {
        const at::Tensor part = w.narrow(1, k * width, std::min(width, cols - k * width));
        at::Tensor xmin = std::get<0>(part.min(1)).clamp_max(0.0);
        at::Tensor xmax = std::get<0>(part.max(1)).clamp_min(0.0);
        const at::Tensor flat = xmin == xmax; // all-zero rows get a harmless [-1, 1] grid
        xmin = at::where(flat, at::full_like(xmin, -1.0), xmin);
        xmax = at::where(flat, at::full_like(xmax, 1.0), xmax);
        // FP16 scale, never rounded to zero (the smallest normal half is 2^-14).
        const at::Tensor scale = round_to_fp16((xmax - xmin) / maxq).clamp_min(std::ldexp(1.0, -14));
        g.scale.select(1, k).copy_(scale);
        g.zero.select(1, k).copy_(at::round(-xmin / scale).clamp(0.0, maxq));
    }
    return g;
}

BinaryStats fit_binary_stats(const at::Tensor& W, const at::Tensor& salient_mask, Binarizer binarizer, int group_cols)
{
    const at::Tensor w = W.to(at::kFloat);
    const std::int64_t rows = w.size(0), cols = w.size(1);
    const std::int64_t groups = groups_of(cols, group_cols);
    const std::int64_t width = group_cols > 0 ? group_cols : cols;
    BinaryStats s;
    s.mu = at::zeros({rows, groups}, at::kFloat);
    s.alpha = at::zeros({rows, groups}, at::kFloat);
    for (std::int64_t k = 0; k < groups; ++k) {
        const std::int64_t n = std::min(width, cols - k * width);
        const at::Tensor part = w.narrow(1, k * width, n);
        const at::Tensor keep = (~salient_mask.narrow(1, k * width, n)).to(at::kFloat);
        at::Tensor mu, alpha;
        switch (binarizer) {
        case Binarizer::Xnor: {
            const at::Tensor count = keep.sum(1).clamp_min(1.0);
            mu = (part * keep).sum(1) / count;
            alpha = ((part - mu.unsqueeze(1)).abs() * keep).sum(1) / count;
            break;
        }
        case Binarizer::XnorCode: {
            // The authors' code: salient entries zeroed, means over all columns of the group.
            const at::Tensor zeroed = part * keep;
            mu = zeroed.mean(1);
            alpha = (zeroed - mu.unsqueeze(1)).abs().mean(1);
            break;
        }
        case Binarizer::Sign: {
            const at::Tensor count = keep.sum(1).clamp_min(1.0);
            mu = at::zeros({rows}, at::kFloat);
            alpha = (part.abs() * keep).sum(1) / count;
            break;
        }
        }
        s.mu.select(1, k).copy_(round_to_fp16(mu));
        s.alpha.select(1, k).copy_(round_to_fp16(alpha));
    }
    return s;
}

} // namespace pbllm
