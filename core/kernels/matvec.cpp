#include "core/kernels/matvec.h"

#include "core/kernels/matvec_avx2.h"
#include "core/kernels/matvec_avx512.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

namespace pbllm::kernels {

float f16_to_float(std::uint16_t h)
{
    // IEEE half -> single, subnormals included (exact: every half is a float).
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {
        exponent = 113;
        while ((mantissa & 0x400) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

namespace {

float bf16_to_float(std::uint16_t b)
{
    const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

float weight_at(WeightFormat format, const void* W, std::int64_t i)
{
    switch (format) {
    case WeightFormat::F16: return f16_to_float(static_cast<const std::uint16_t*>(W)[i]);
    case WeightFormat::BF16: return bf16_to_float(static_cast<const std::uint16_t*>(W)[i]);
    case WeightFormat::F32: break;
    }
    return static_cast<const float*>(W)[i];
}

} // namespace

bool cpu_has_avx2_kernels()
{
#if defined(__x86_64__) && defined(__GNUC__)
    // F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know "f16c".
    static const bool has = [] {
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
        return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return has;
#else
    return false;
#endif
}

bool cpu_has_avx512_kernels()
{
#if defined(__x86_64__) && defined(__GNUC__)
    // __builtin_cpu_supports reports AVX-512 only when the OS saves the ZMM and mask registers.
    static const bool has = cpu_has_avx2_kernels() && __builtin_cpu_supports("avx512f") &&
                            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                            __builtin_cpu_supports("avx512vnni");
    return has;
#else
    return false;
#endif
}

void matvec_rows_reference(WeightFormat format, const void* W, const float* x, float* y, std::int64_t cols,
                           std::int64_t begin, std::int64_t end)
{
    for (std::int64_t r = begin; r < end; ++r) {
        float sum = 0.0f;
        for (std::int64_t c = 0; c < cols; ++c)
            sum += weight_at(format, W, r * cols + c) * x[c];
        y[r] = sum;
    }
}

const std::vector<MatvecKernels>& available_matvec_kernels()
{
    static const std::vector<MatvecKernels> kernels = [] {
        std::vector<MatvecKernels> out;
#if defined(__x86_64__) && defined(__GNUC__)
        if (cpu_has_avx2_kernels())
            out.push_back({"avx2-fma-f16c", avx2::matvec_f32, avx2::matvec_f16, avx2::matvec_bf16, avx2::matvec_int8});
        if (cpu_has_avx512_kernels())
            out.push_back({"avx512", avx512::matvec_f32, avx512::matvec_f16, avx512::matvec_bf16, avx512::matvec_int8});
#endif
        return out;
    }();
    return kernels;
}

namespace {

/// The fastest kernels this CPU runs, or null (then the reference runs).
const MatvecKernels* fastest_matvecs()
{
    const std::vector<MatvecKernels>& all = available_matvec_kernels();
    return all.empty() ? nullptr : &all.back();
}

} // namespace

void matvec_rows(WeightFormat format, const void* W, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end)
{
    if (const MatvecKernels* k = fastest_matvecs()) {
        switch (format) {
        case WeightFormat::F32: return k->f32(static_cast<const float*>(W), x, y, cols, begin, end);
        case WeightFormat::F16: return k->f16(static_cast<const std::uint16_t*>(W), x, y, cols, begin, end);
        case WeightFormat::BF16: return k->bf16(static_cast<const std::uint16_t*>(W), x, y, cols, begin, end);
        }
    }
    matvec_rows_reference(format, W, x, y, cols, begin, end);
}

Int8Rows quantize_rows_int8(const float* W, std::int64_t rows, std::int64_t cols)
{
    Int8Rows out;
    out.rows = rows;
    out.cols = cols;
    out.q.resize(static_cast<std::size_t>(rows * cols));
    out.scale.resize(static_cast<std::size_t>(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
        const float* w = W + r * cols;
        float amax = 0.0f;
        for (std::int64_t c = 0; c < cols; ++c)
            amax = std::max(amax, std::abs(w[c]));
        const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        out.scale[static_cast<std::size_t>(r)] = amax / 127.0f;
        for (std::int64_t c = 0; c < cols; ++c)
            out.q[static_cast<std::size_t>(r * cols + c)] = saturate_int8(std::nearbyint(w[c] * inverse));
    }
    return out;
}

void matvec_int8_rows_reference(const Int8Rows& W, const float* x, float* y, std::int64_t begin, std::int64_t end)
{
    for (std::int64_t r = begin; r < end; ++r) {
        float sum = 0.0f;
        for (std::int64_t c = 0; c < W.cols; ++c)
            sum += static_cast<float>(W.q[static_cast<std::size_t>(r * W.cols + c)]) * x[c];
        y[r] = W.scale[static_cast<std::size_t>(r)] * sum;
    }
}

void matvec_int8_rows(const Int8Rows& W, const float* x, float* y, std::int64_t begin, std::int64_t end)
{
    if (const MatvecKernels* k = fastest_matvecs())
        return k->int8(W.q.data(), W.scale.data(), x, y, W.cols, begin, end);
    matvec_int8_rows_reference(W, x, y, begin, end);
}

const char* matvec_kernel_name()
{
    const MatvecKernels* k = fastest_matvecs();
    return k ? k->name : "reference";
}

void to_float(WeightFormat format, const void* src, float* dst, std::int64_t n)
{
    for (std::int64_t i = 0; i < n; ++i)
        dst[i] = weight_at(format, src, i);
}

} // namespace pbllm::kernels
