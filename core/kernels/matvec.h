#pragma once
// Matrix-vector kernels of batch-1 decoding: y = W x with W stored as F32, F16 or BF16 and
// everything accumulated in float32. Decoding one token reads every weight once, so it is bound
// by memory bandwidth: half-size weights converted inside the kernel move half the bytes.
#include <cstdint>

namespace pbllm::kernels {

enum class WeightFormat { F32, F16, BF16 };

/// y[r] = W[r, :] . x for rows [begin, end) of the row-major (rows, cols) matrix W. Uses the
/// AVX2 + FMA + F16C kernel when the CPU has them, the reference otherwise.
void matvec_rows(WeightFormat format, const void* W, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end);

/// The scalar definition the fast kernels are tested against.
void matvec_rows_reference(WeightFormat format, const void* W, const float* x, float* y, std::int64_t cols,
                           std::int64_t begin, std::int64_t end);

/// "avx2-fma-f16c" or "reference": what matvec_rows runs on this CPU.
const char* matvec_kernel_name();

/// True when the CPU has AVX2, FMA and F16C: what every x86 fast kernel here needs.
bool cpu_has_avx2_kernels();

/// IEEE half bits -> float (exact, subnormals included).
float f16_to_float(std::uint16_t h);

/// dst[i] = float(src[i]) for n stored weights (embedding rows, norm weights).
void to_float(WeightFormat format, const void* src, float* dst, std::int64_t n);

} // namespace pbllm::kernels
