// Compiled with AVX-512 F/BW/VL (core/CMakeLists.txt); reached only through the run-time check
// in matvec.cpp.
#include "core/kernels/matvec_avx512.h"

#include <immintrin.h>

namespace pbllm::kernels::avx512 {
namespace {

/// Sixteen stored weights as floats; `live` masks the lanes past a row's end (nothing there is read).
struct LoadF32 {
    static __m512 load(const float* p, __mmask16 live) { return _mm512_maskz_loadu_ps(live, p); }
};
struct LoadF16 {
    static __m512 load(const std::uint16_t* p, __mmask16 live) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, p)); }
};
struct LoadBF16 {
    static __m512 load(const std::uint16_t* p, __mmask16 live)
    {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, p)), 16));
    }
};
struct LoadInt8 {
    static __m512 load(const std::int8_t* p, __mmask16 live)
    {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(live, p)));
    }
};

/// Row r's dot product with x: four independent accumulators hide the FMA latency, and the last
/// partial group of 16 columns is a masked load rather than a scalar loop.
template <typename Load, typename T>
float row_dot(const T* w, const float* x, std::int64_t cols)
{
    const __mmask16 all = 0xffff;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    std::int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        a0 = _mm512_fmadd_ps(Load::load(w + c, all), _mm512_loadu_ps(x + c), a0);
        a1 = _mm512_fmadd_ps(Load::load(w + c + 16, all), _mm512_loadu_ps(x + c + 16), a1);
        a2 = _mm512_fmadd_ps(Load::load(w + c + 32, all), _mm512_loadu_ps(x + c + 32), a2);
        a3 = _mm512_fmadd_ps(Load::load(w + c + 48, all), _mm512_loadu_ps(x + c + 48), a3);
    }
    for (; c < cols; c += 16) {
        const __mmask16 live = cols - c >= 16 ? all : static_cast<__mmask16>((1u << (cols - c)) - 1u);
        a0 = _mm512_fmadd_ps(Load::load(w + c, live), _mm512_maskz_loadu_ps(live, x + c), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

template <typename Load, typename T>
void matvec(const T* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end)
{
    for (std::int64_t r = begin; r < end; ++r)
        y[r] = row_dot<Load>(W + r * cols, x, cols);
}

} // namespace

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

void matvec_int8(const std::int8_t* W, const float* scale, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end)
{
    for (std::int64_t r = begin; r < end; ++r)
        y[r] = scale[r] * row_dot<LoadInt8>(W + r * cols, x, cols);
}

} // namespace pbllm::kernels::avx512
