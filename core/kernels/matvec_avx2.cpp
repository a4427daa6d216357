// Compiled with -mavx2 -mfma -mf16c (core/CMakeLists.txt); reached only through the run-time
// check in matvec.cpp.
#include "core/kernels/matvec_avx2.h"

#include "core/kernels/avx2_common.h"

#include <immintrin.h>

namespace pbllm::kernels::avx2 {
namespace {

/// Eight stored weights as floats.
struct LoadF32 {
    static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
    static float scalar(float w) { return w; }
};
struct LoadF16 {
    static __m256 load(const std::uint16_t* p)
    {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static float scalar(std::uint16_t w) { return _cvtsh_ss(w); }
};
struct LoadBF16 {
    static __m256 load(const std::uint16_t* p)
    {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    static float scalar(std::uint16_t w)
    {
        const std::uint32_t bits = static_cast<std::uint32_t>(w) << 16;
        float f;
        __builtin_memcpy(&f, &bits, 4);
        return f;
    }
};

// Four independent accumulators hide the FMA latency; the stream of W is what bounds the speed.
template <typename Load, typename T>
void matvec(const T* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end)
{
    for (std::int64_t r = begin; r < end; ++r) {
        const T* w = W + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        std::int64_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            a0 = _mm256_fmadd_ps(Load::load(w + c), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(Load::load(w + c + 8), _mm256_loadu_ps(x + c + 8), a1);
            a2 = _mm256_fmadd_ps(Load::load(w + c + 16), _mm256_loadu_ps(x + c + 16), a2);
            a3 = _mm256_fmadd_ps(Load::load(w + c + 24), _mm256_loadu_ps(x + c + 24), a3);
        }
        for (; c + 8 <= cols; c += 8)
            a0 = _mm256_fmadd_ps(Load::load(w + c), _mm256_loadu_ps(x + c), a0);
        float sum = horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; c < cols; ++c)
            sum += Load::scalar(w[c]) * x[c];
        y[r] = sum;
    }
}

} // namespace

void matvec_int8(const std::int8_t* W, const float* scale, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end)
{
    for (std::int64_t r = begin; r < end; ++r) {
        const std::int8_t* w = W + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        std::int64_t c = 0;
        auto widen = [&](std::int64_t at) {
            return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + at))));
        };
        for (; c + 32 <= cols; c += 32) {
            a0 = _mm256_fmadd_ps(widen(c), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(widen(c + 8), _mm256_loadu_ps(x + c + 8), a1);
            a2 = _mm256_fmadd_ps(widen(c + 16), _mm256_loadu_ps(x + c + 16), a2);
            a3 = _mm256_fmadd_ps(widen(c + 24), _mm256_loadu_ps(x + c + 24), a3);
        }
        for (; c + 8 <= cols; c += 8)
            a0 = _mm256_fmadd_ps(widen(c), _mm256_loadu_ps(x + c), a0);
        float sum = horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; c < cols; ++c)
            sum += static_cast<float>(w[c]) * x[c];
        y[r] = scale[r] * sum;
    }
}

void matvec_f32(const float* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end)
{
    matvec<LoadF32>(W, x, y, cols, begin, end);
}

void matvec_f16(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin,
                std::int64_t end)
{
    matvec<LoadF16>(W, x, y, cols, begin, end);
}

void matvec_bf16(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin,
                 std::int64_t end)
{
    matvec<LoadBF16>(W, x, y, cols, begin, end);
}

} // namespace pbllm::kernels::avx2
