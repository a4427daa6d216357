#pragma once
// Matrix-vector kernels of batch-1 decoding: y = W x with W stored as F32, F16 or BF16 and
// everything accumulated in float32. Decoding one token reads every weight once, so it is bound
// by memory bandwidth: half-size weights converted inside the kernel move half the bytes.
#include <cstdint>
#include <vector>

namespace pbllm::kernels {

enum class WeightFormat { F32, F16, BF16 };

/// y[r] = W[r, :] . x for rows [begin, end) of the row-major (rows, cols) matrix W. Uses the
/// AVX-512 kernel (matvec_avx512.h) or the AVX2 + FMA + F16C one (matvec_avx2.h) when the CPU has
/// them, the reference otherwise.
void matvec_rows(WeightFormat format, const void* W, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end);

/// The scalar definition the fast kernels are tested against.
void matvec_rows_reference(WeightFormat format, const void* W, const float* x, float* y, std::int64_t cols,
                           std::int64_t begin, std::int64_t end);

/// A value already rounded to an integer, as int8 the way the SIMD conversions give it: clamped
/// to [-128, 127], NaN to -128 (cvtps gives INT_MIN for NaN, which packs saturate).
inline std::int8_t saturate_int8(float v)
{
    if (!(v == v))
        return -128;
    return static_cast<std::int8_t>(v < -128.0f ? -128.0f : v > 127.0f ? 127.0f : v);
}

/// An int8 copy of a matrix: row r is scale[r] * q[r, :], q in [-127, 127] (max |w| / 127 per
/// row, rounded to nearest even). Half the bytes of FP16: the optional int8 output head.
struct Int8Rows {
    std::int64_t rows = 0, cols = 0;
    std::vector<std::int8_t> q;
    std::vector<float> scale;
};
/// Rounds rows of a float32 matrix.
Int8Rows quantize_rows_int8(const float* W, std::int64_t rows, std::int64_t cols);
/// y[r] = scale[r] * (q[r, :] . x) for rows [begin, end); AVX-512 or AVX2 when the CPU has it.
void matvec_int8_rows(const Int8Rows& W, const float* x, float* y, std::int64_t begin, std::int64_t end);
void matvec_int8_rows_reference(const Int8Rows& W, const float* x, float* y, std::int64_t begin, std::int64_t end);

/// One instruction set's fast kernels (arguments as matvec_rows and matvec_int8_rows take them).
struct MatvecKernels {
    const char* name; ///< "avx2-fma-f16c" or "avx512"
    void (*f32)(const float* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end);
    void (*f16)(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end);
    void (*bf16)(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end);
    void (*int8)(const std::int8_t* W, const float* scale, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end);
};
/// The fast kernels this CPU can run, the fastest last (matvec_rows and matvec_int8_rows use it);
/// empty where there are none, and then the reference runs.
const std::vector<MatvecKernels>& available_matvec_kernels();

/// "avx512", "avx2-fma-f16c" or "reference": what matvec_rows runs on this CPU.
const char* matvec_kernel_name();

/// True when the CPU has AVX2, FMA and F16C: what every x86 fast kernel here needs.
bool cpu_has_avx2_kernels();
/// True when the CPU (and the OS) has AVX-512 F, BW, VL and VNNI: what the AVX-512 packed kernel needs.
bool cpu_has_avx512_kernels();

/// IEEE half bits -> float (exact, subnormals included).
float f16_to_float(std::uint16_t h);

/// dst[i] = float(src[i]) for n stored weights (embedding rows, norm weights).
void to_float(WeightFormat format, const void* src, float* dst, std::int64_t n);

} // namespace pbllm::kernels
