// Compiled with -mavx2 -mfma -mf16c (core/CMakeLists.txt); reached only through the run-time
// check in packed_matvec.cpp.
#include "core/kernels/packed_matvec_avx2.h"

#include <immintrin.h>

#include <algorithm>

namespace pbllm::kernels::avx2 {
namespace {

float horizontal_sum(__m256 v)
{
    const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

float half(std::uint16_t h) { return _cvtsh_ss(h); }

/// Eight bytes from entry e on (past the end of the array: zeros, never read beyond it).
inline __m128i load8(const std::vector<std::uint8_t>& v, std::int64_t e)
{
    if (static_cast<std::size_t>(e) + 8 <= v.size())
        return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(v.data() + e));
    std::uint8_t tail[16] = {};
    std::copy(v.begin() + e, v.end(), tail);
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(tail));
}

/// Eight FP16 values from entry e on as floats (zeros past the end; garbage lanes are masked
/// out by x = 0, and FP16 values are checked finite when the layout is built).
inline __m256 load8_halves(const std::vector<std::uint16_t>& v, std::int64_t e)
{
    if (static_cast<std::size_t>(e) + 8 <= v.size())
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v.data() + e)));
    std::uint16_t tail[8] = {};
    std::copy(v.begin() + e, v.end(), tail);
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tail)));
}

/// Sum of x over the set bits of one 128-column block (four sign words), into acc. Each word is
/// broadcast once; a per-lane variable shift moves column bit j to the lane's sign bit, which
/// blendv reads as its select mask.
inline void add_block(const std::uint32_t* words, const float* x, __m256 acc[4])
{
    const __m256i shift0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i shift1 = _mm256_sub_epi32(shift0, _mm256_set1_epi32(8));
    const __m256i shift2 = _mm256_sub_epi32(shift0, _mm256_set1_epi32(16));
    const __m256i shift3 = _mm256_sub_epi32(shift0, _mm256_set1_epi32(24));
    const __m256 zero = _mm256_setzero_ps();
    for (int w = 0; w < kPackedBlock / 32; ++w) {
        const __m256i bits = _mm256_set1_epi32(static_cast<int>(words[w]));
        const float* xw = x + 32 * w;
        acc[0] = _mm256_add_ps(acc[0], _mm256_blendv_ps(zero, _mm256_loadu_ps(xw), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift0))));
        acc[1] = _mm256_add_ps(acc[1], _mm256_blendv_ps(zero, _mm256_loadu_ps(xw + 8), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift1))));
        acc[2] = _mm256_add_ps(acc[2], _mm256_blendv_ps(zero, _mm256_loadu_ps(xw + 16), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift2))));
        acc[3] = _mm256_add_ps(acc[3], _mm256_blendv_ps(zero, _mm256_loadu_ps(xw + 24), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift3))));
    }
}

} // namespace

void packed_matvec(const PackedWeights& W, const PackedInput& in, float* y, std::int64_t begin, std::int64_t end)
{
    const float* x = in.x.data();
    const std::int64_t words = W.words_per_row();
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (std::int64_t r = begin; r < end; ++r) {
        const std::uint32_t* signs = W.signs.data() + r * words;
        const std::uint8_t* count = W.block_count.data() + r * W.blocks;
        std::int64_t e = W.row_start[static_cast<std::size_t>(r)];
        float out = 0.0f;
        for (std::int64_t g = 0; g < W.groups; ++g) {
            const std::int64_t b0 = g * W.group_blocks, b1 = std::min(W.blocks, b0 + W.group_blocks);
            float dense = 0.0f;
            if (W.binarized) {
                __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                for (std::int64_t b = b0; b < b1; ++b)
                    add_block(signs + b * (kPackedBlock / 32), x + b * kPackedBlock, acc);
                dense = horizontal_sum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            }
            // The salient entries: eight at a time, x gathered by their in-block offsets.
            __m256 acc_qx = _mm256_setzero_ps(), acc_x = _mm256_setzero_ps();
            for (std::int64_t b = b0; b < b1; ++b) {
                const float* xb = x + b * kPackedBlock;
                const std::int64_t stop = e + count[b];
                for (; e < stop; e += 8) {
                    const std::int64_t n = std::min<std::int64_t>(8, stop - e);
                    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), iota);
                    const __m256i index = _mm256_and_si256(_mm256_cvtepu8_epi32(load8(W.offsets, e)), lanes);
                    const __m256 xv = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), xb, index, _mm256_castsi256_ps(lanes), 4);
                    const __m256 q = W.code_bits == 16 ? load8_halves(W.values16, e)
                                                       : _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(load8(W.codes, e)));
                    acc_qx = _mm256_fmadd_ps(q, xv, acc_qx); // lanes past n: x is 0
                    acc_x = _mm256_add_ps(acc_x, xv);
                }
                e = stop;
            }
            const float sum_qx = horizontal_sum(acc_qx), sum_x = horizontal_sum(acc_x);
            const std::size_t p = static_cast<std::size_t>(r * W.groups + g);
            const float mu = half(W.mu[p]), alpha = half(W.alpha[p]), s = half(W.scale[p]);
            const float z = static_cast<float>(W.zero[p]);
            out += (mu - alpha) * (in.group_sums[static_cast<std::size_t>(g)] - sum_x) + 2.0f * alpha * dense +
                   s * sum_qx - s * z * sum_x;
        }
        y[r] = out;
    }
}

} // namespace pbllm::kernels::avx2
