#include "core/tensor_stats.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace pbllm {
namespace {

constexpr std::int64_t kChunk = 1 << 20;

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

void for_each_float64_chunk(const at::Tensor& t, const std::function<void(const at::Tensor&)>& fn)
{
    const at::Tensor flat = t.flatten();
    for (std::int64_t i = 0; i < flat.numel(); i += kChunk)
        fn(flat.narrow(0, i, std::min(kChunk, flat.numel() - i)).to(at::kCPU, at::kDouble));
}

namespace {

inline double as_double(float v) { return v; }
inline double as_double(double v) { return v; }
inline double as_double(c10::Half v) { return static_cast<float>(v); }
inline double as_double(c10::BFloat16 v) { return static_cast<float>(v); }

/// Runs fn(chunk, begin, end) for every chunk of n elements in parallel; fn writes its own slot.
template <typename F>
void for_chunks(std::int64_t n, F&& fn)
{
    const std::int64_t chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, 1, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t c = b; c < e; ++c)
            fn(c, c * kChunk, std::min(n, (c + 1) * kChunk));
    });
}

template <typename T>
TensorStats typed_stats(const T* p, std::int64_t n, int bins)
{
    TensorStats s;
    s.count = n;
    const std::int64_t chunks = (n + kChunk - 1) / kChunk;
    struct First { double sum = 0, mn = INFINITY, mx = -INFINITY; std::int64_t bad = 0; };
    std::vector<First> first(static_cast<std::size_t>(chunks));
    for_chunks(n, [&](std::int64_t c, std::int64_t b, std::int64_t e) {
        First r;
        for (std::int64_t i = b; i < e; ++i) {
            const double v = as_double(p[i]);
            if (!std::isfinite(v)) {
                ++r.bad;
                continue;
            }
            r.sum += v;
            r.mn = std::min(r.mn, v);
            r.mx = std::max(r.mx, v);
        }
        first[static_cast<std::size_t>(c)] = r;
    });
    double sum = 0, mn = INFINITY, mx = -INFINITY;
    for (const First& r : first) {
        sum += r.sum;
        mn = std::min(mn, r.mn);
        mx = std::max(mx, r.mx);
        s.nonfinite += r.bad;
    }
    if (s.nonfinite > 0) {
        s.mean = s.std = s.kurtosis = NAN;
        return s;
    }
    s.min = mn;
    s.max = mx;
    s.abs_max = std::max(std::abs(mn), std::abs(mx));
    s.mean = sum / static_cast<double>(n);
    const double lo = mn, hi = mx == mn ? mn + 1.0 : mx;
    struct Second { double m2 = 0, m4 = 0; std::vector<std::int64_t> bins; };
    std::vector<Second> second(static_cast<std::size_t>(chunks));
    for_chunks(n, [&](std::int64_t c, std::int64_t b, std::int64_t e) {
        Second r;
        r.bins.assign(static_cast<std::size_t>(std::max(bins, 0)), 0);
        for (std::int64_t i = b; i < e; ++i) {
            const double v = as_double(p[i]);
            const double d2 = (v - s.mean) * (v - s.mean);
            r.m2 += d2;
            r.m4 += d2 * d2;
            if (bins > 0) {
                const double at = std::floor((v - lo) / (hi - lo) * bins);
                ++r.bins[static_cast<std::size_t>(std::clamp(at, 0.0, static_cast<double>(bins - 1)))];
            }
        }
        second[static_cast<std::size_t>(c)] = std::move(r);
    });
    double m2 = 0, m4 = 0;
    s.histogram.assign(static_cast<std::size_t>(std::max(bins, 0)), 0);
    for (const Second& r : second) {
        m2 += r.m2;
        m4 += r.m4;
        for (std::size_t k = 0; k < r.bins.size(); ++k)
            s.histogram[k] += r.bins[k];
    }
    const double var = m2 / static_cast<double>(n);
    s.std = std::sqrt(var);
    if (var > 0) {
        s.kurtosis = m4 / static_cast<double>(n) / (var * var) - 3.0;
        std::vector<std::int64_t> outliers(static_cast<std::size_t>(chunks), 0);
        const double limit = 3.0 * s.std;
        for_chunks(n, [&](std::int64_t c, std::int64_t b, std::int64_t e) {
            std::int64_t k = 0;
            for (std::int64_t i = b; i < e; ++i)
                k += std::abs(as_double(p[i]) - s.mean) > limit;
            outliers[static_cast<std::size_t>(c)] = k;
        });
        std::int64_t total = 0;
        for (std::int64_t k : outliers)
            total += k;
        s.outlier_fraction = static_cast<double>(total) / static_cast<double>(n);
    }
    return s;
}

} // namespace

TensorStats tensor_stats(const at::Tensor& t, int histogram_bins)
{
    if (t.numel() == 0)
        return {};
    at::Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(at::kCPU).contiguous(); // a mapped tensor is already
    switch (c.scalar_type()) {
    case at::kFloat: return typed_stats(c.data_ptr<float>(), c.numel(), histogram_bins);
    case at::kHalf: return typed_stats(c.data_ptr<c10::Half>(), c.numel(), histogram_bins);
    case at::kBFloat16: return typed_stats(c.data_ptr<c10::BFloat16>(), c.numel(), histogram_bins);
    default: break;
    }
    c = c.to(at::kDouble);
    return typed_stats(c.data_ptr<double>(), c.numel(), histogram_bins);
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
