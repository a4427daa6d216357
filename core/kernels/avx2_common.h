#pragma once
// Helpers shared by the AVX2 kernel files (compiled with -mavx2 -mfma -mf16c only).
#include <immintrin.h>

namespace pbllm::kernels::avx2 {

/// The sum of the eight lanes.
inline float horizontal_sum(__m256 v)
{
    const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

} // namespace pbllm::kernels::avx2
