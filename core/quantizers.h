#pragma once
// The element quantizers of PB-LLM (METHOD.md sections 2 and 3): the b-bit asymmetric row grid for
// salient weights and the binarizers for the rest. Their parameters are rounded to FP16 before
// use, because the packed checkpoint stores them in FP16: a reloaded file then reproduces the
// quantizer's output bit for bit. The scalar functions here are the single definition of each
// dequantized value; every vectorised path must agree with them exactly.
#include "core/quant_config.h"

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pbllm {

/// The nearest FP16 value, as float: round to nearest even, overflow to +-inf, FP16 subnormals
/// kept (what at::kHalf stores). Inline and branch-free so per-element loops vectorise.
inline float round_to_fp16(float v)
{
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    const std::uint32_t sign = u & 0x80000000u, a = u ^ sign;
    float magnitude;
    std::memcpy(&magnitude, &a, 4);
    // Normal range: drop 13 of the 23 mantissa bits, rounding half to even (a carry into the
    // exponent is the correct result).
    const std::uint32_t rounded = (a + 0xFFFu + ((a >> 13) & 1u)) & ~0x1FFFu;
    float normal;
    std::memcpy(&normal, &rounded, 4);
    // Subnormal range (below 2^-14): multiples of 2^-24, which 0.5 + x rounds to in float.
    const float subnormal = (magnitude + 0.5f) - 0.5f;
    float r = magnitude < 6.103515625e-05f ? subnormal : (normal > 65504.0f ? INFINITY : normal);
    r = magnitude != magnitude ? magnitude : r; // NaN stays NaN
    std::uint32_t out;
    std::memcpy(&out, &r, 4);
    out |= sign;
    std::memcpy(&r, &out, 4);
    return r;
}
at::Tensor round_to_fp16(const at::Tensor& t);

/// Per-row (or per row and column group) asymmetric min-max grid: xmin = min(min, 0),
/// xmax = max(max, 0), scale = (xmax - xmin) / (2^b - 1) in FP16, zero = round(-xmin / scale).
struct RowGrid {
    at::Tensor scale; ///< (rows, groups) float32, FP16-representable, > 0
    at::Tensor zero;  ///< (rows, groups) float32 holding integers in [0, 2^b - 1]
    int bits = 8;
    int maxq() const { return (1 << bits) - 1; }
};

/// Grid for each row of W (rows, cols), one per `group_cols` columns (0 = whole row).
RowGrid fit_row_grid(const at::Tensor& W, int bits, int group_cols = 0);

/// Round half to even, like std::nearbyint and at::round, without nearbyint's save and restore of
/// the floating-point environment (a library call per element on baseline x86-64): adding and
/// subtracting 1.5 * 2^23 leaves exactly the nearest-even integer for |v| < 2^22; larger floats
/// are integers already.
inline float round_half_even(float v)
{
    constexpr float magic = 12582912.0f; // 1.5 * 2^23
    return std::fabs(v) < 4194304.0f ? (v + magic) - magic : v;
}

/// Code of w on a grid: clamp(round(w / scale) + zero, 0, maxq), round half to even.
inline int grid_code(float w, float scale, float zero, int maxq)
{
    const float q = round_half_even(w / scale) + zero;
    return static_cast<int>(std::fmin(std::fmax(q, 0.0f), static_cast<float>(maxq)));
}
/// Dequantized value of a grid code.
inline float grid_value(int code, float scale, float zero) { return scale * (static_cast<float>(code) - zero); }

/// Binarization statistics per row and column group, FP16-representable. For the sign
/// binarizer mu is 0, so every binarizer dequantizes the same way (binary_value).
struct BinaryStats {
    at::Tensor mu;    ///< (rows, groups)
    at::Tensor alpha; ///< (rows, groups), >= 0
};

/// Statistics over the non-salient entries (mask false) of W (rows, cols) per `group_cols`
/// columns (0 = whole row), as `binarizer` defines them. A row/group with no non-salient entry
/// gets mu = alpha = 0.
BinaryStats fit_binary_stats(const at::Tensor& W, const at::Tensor& salient_mask, Binarizer binarizer,
                             int group_cols = 0);

/// Sign bit of w: true (+1) when w - mu >= 0 (sign(0) = +1).
inline bool binary_sign(float w, float mu) { return w - mu >= 0.0f; }
/// Dequantized binarized weight: mu + alpha or mu - alpha.
inline float binary_value(bool positive, float mu, float alpha) { return positive ? mu + alpha : mu - alpha; }

} // namespace pbllm
