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
            // The salient entries: a short gather per block, two accumulators each.
            float qx0 = 0.0f, qx1 = 0.0f, sx0 = 0.0f, sx1 = 0.0f;
            for (std::int64_t b = b0; b < b1; ++b) {
                const float* xb = x + b * kPackedBlock;
                const std::int64_t stop = e + count[b];
                const std::uint8_t* off = W.offsets.data();
                if (W.code_bits == 16) {
                    const std::uint16_t* v = W.values16.data();
                    for (; e < stop; ++e) {
                        const float xv = xb[off[e]];
                        qx0 += half(v[e]) * xv;
                        sx0 += xv;
                    }
                } else {
                    const std::uint8_t* q = W.codes.data();
                    for (; e + 1 < stop; e += 2) {
                        const float xa = xb[off[e]], xc = xb[off[e + 1]];
                        qx0 += static_cast<float>(q[e]) * xa;
                        qx1 += static_cast<float>(q[e + 1]) * xc;
                        sx0 += xa;
                        sx1 += xc;
                    }
                    if (e < stop) {
                        const float xa = xb[off[e]];
                        qx0 += static_cast<float>(q[e]) * xa;
                        sx0 += xa;
                        ++e;
                    }
                }
            }
            const float sum_qx = qx0 + qx1, sum_x = sx0 + sx1;
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
