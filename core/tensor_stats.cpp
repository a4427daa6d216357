#include "core/tensor_stats.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace pbllm {
namespace {

constexpr std::int64_t kChunk = 1 << 20;

/// Calls f(chunk) for consecutive float64 chunks of t's elements.
template <typename F>
void for_each_chunk(const at::Tensor& flat, F&& f)
{
    for (std::int64_t i = 0; i < flat.numel(); i += kChunk)
        f(flat.narrow(0, i, std::min(kChunk, flat.numel() - i)).to(at::kCPU, at::kDouble));
}

/// Elements whose exponent bits (mask) are all ones are NaN or Inf.
template <typename Bits>
NonFinite scan_exponent(const void* bytes, std::int64_t n, Bits mask)
{
    // Through memcpy: reading float storage as integers directly would break aliasing rules.
    const auto bits = [bytes](std::int64_t i) {
        Bits v;
        std::memcpy(&v, static_cast<const char*>(bytes) + i * static_cast<std::int64_t>(sizeof(Bits)), sizeof(Bits));
        return v;
    };
    const std::int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<NonFinite> per_chunk(static_cast<std::size_t>(chunks));
    at::parallel_for(0, chunks, 1, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t c = begin; c < end; ++c) {
            const std::int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
            std::int64_t count = 0;
            for (std::int64_t i = lo; i < hi; ++i)
                count += (bits(i) & mask) == mask;
            NonFinite& r = per_chunk[static_cast<std::size_t>(c)];
            r.count = count;
            for (std::int64_t i = lo; count > 0 && i < hi; ++i)
                if ((bits(i) & mask) == mask) {
                    r.first = i;
                    break;
                }
        }
    });
    NonFinite all;
    for (const NonFinite& r : per_chunk) {
        if (all.first < 0 && r.first >= 0)
            all.first = r.first;
        all.count += r.count;
    }
    return all;
}

} // namespace

TensorStats tensor_stats(const at::Tensor& t)
{
    TensorStats s;
    const at::Tensor flat = t.flatten();
    s.count = flat.numel();
    if (s.count == 0)
        return s;
    // Three passes (mean; centred moments; outliers) keep the float64 results of the whole-tensor
    // formulas without holding a float64 copy of the tensor.
    double sum = 0.0;
    for_each_chunk(flat, [&](const at::Tensor& x) {
        sum += x.sum().item<double>();
        s.abs_max = std::max(s.abs_max, x.abs().max().item<double>());
    });
    s.mean = sum / static_cast<double>(s.count);
    double m2 = 0.0, m4 = 0.0;
    for_each_chunk(flat, [&](const at::Tensor& x) {
        const at::Tensor sq = (x - s.mean).pow(2);
        m2 += sq.sum().item<double>();
        m4 += sq.pow(2).sum().item<double>();
    });
    const double var = m2 / static_cast<double>(s.count);
    s.std = std::sqrt(var);
    if (var > 0) {
        s.kurtosis = m4 / static_cast<double>(s.count) / (var * var) - 3.0;
        std::int64_t outliers = 0;
        for_each_chunk(flat, [&](const at::Tensor& x) {
            outliers += ((x - s.mean).abs() > 3.0 * s.std).sum().item<std::int64_t>();
        });
        s.outlier_fraction = static_cast<double>(outliers) / static_cast<double>(s.count);
    }
    return s;
}

NonFinite find_nonfinite(const at::Tensor& t)
{
    if (t.device().is_cpu() && t.is_contiguous()) {
        const std::int64_t n = t.numel();
        switch (t.scalar_type()) {
        case at::kFloat:
            return scan_exponent(t.data_ptr(), n, std::uint32_t{0x7f800000});
        case at::kHalf:
            return scan_exponent(t.data_ptr(), n, std::uint16_t{0x7c00});
        case at::kBFloat16:
            return scan_exponent(t.data_ptr(), n, std::uint16_t{0x7f80});
        default: break;
        }
    }
    const at::Tensor bad = ~at::isfinite(t).flatten();
    NonFinite r;
    r.count = bad.sum().item<std::int64_t>();
    if (r.count > 0)
        r.first = bad.nonzero()[0].item<std::int64_t>();
    return r;
}

} // namespace pbllm
