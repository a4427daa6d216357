// Compiled with -mavx2 -mfma -mf16c (core/CMakeLists.txt); reached only through the run-time
// check in packed_matvec.cpp, for Linears with one parameter group per row.
#include "core/kernels/packed_matvec_avx2.h"

#include "core/kernels/avx2_common.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace pbllm::kernels::avx2 {
namespace {

float half(std::uint16_t h) { return _cvtsh_ss(h); }

/// Sum of x over the set bits of a row's sign plane, float32: each word is broadcast once and a
/// per-lane variable shift moves column bit j to the lane's sign bit, which selects x.
float dense_float(const std::uint32_t* words, const float* x, std::int64_t word_count)
{
    const __m256i shift0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i shift1 = _mm256_sub_epi32(shift0, _mm256_set1_epi32(8));
    const __m256i shift2 = _mm256_sub_epi32(shift0, _mm256_set1_epi32(16));
    const __m256i shift3 = _mm256_sub_epi32(shift0, _mm256_set1_epi32(24));
    const __m256 zero = _mm256_setzero_ps();
    __m256 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    for (std::int64_t w = 0; w < word_count; ++w) {
        const __m256i bits = _mm256_set1_epi32(static_cast<int>(words[w]));
        const float* xw = x + 32 * w;
        a0 = _mm256_add_ps(a0, _mm256_blendv_ps(zero, _mm256_loadu_ps(xw), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift0))));
        a1 = _mm256_add_ps(a1, _mm256_blendv_ps(zero, _mm256_loadu_ps(xw + 8), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift1))));
        a2 = _mm256_add_ps(a2, _mm256_blendv_ps(zero, _mm256_loadu_ps(xw + 16), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift2))));
        a3 = _mm256_add_ps(a3, _mm256_blendv_ps(zero, _mm256_loadu_ps(xw + 24), _mm256_castsi256_ps(_mm256_sllv_epi32(bits, shift3))));
    }
    return horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/// The same with int8 activations: a word's 32 bits become a byte mask (each byte of the word
/// spread over eight bytes, then tested against its bit), the masked int8 x are summed in pairs
/// by maddubs into int16, and each 128-column block's integer sum is scaled once.
float dense_int8(const std::uint32_t* words, const std::int8_t* xq, const float* block_scale, std::int64_t blocks)
{
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < blocks; ++b) {
        __m256i pairs = _mm256_setzero_si256(); // at most 4 x 2 x 127 per int16 lane
        for (int w = 0; w < kPackedBlock / 32; ++w) {
            const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(words[b * 4 + w])), spread);
            const __m256i mask = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kPackedBlock + 32 * w));
            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(ones8, _mm256_and_si256(mask, x)));
        }
        const __m256 sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones16));
        acc = _mm256_fmadd_ps(sums, _mm256_set1_ps(block_scale[b]), acc);
    }
    return horizontal_sum(acc);
}

/// The activations the salient entries read: float32, or int16 (widened as gathered).
enum class SalientSource { Float32, Int16 };

/// x at the 8 in-block columns `col` of block xb, zero where `live` is clear.
template <SalientSource Source>
__m256 gather_block(const void* xb, __m256i col, __m256 live)
{
    if (Source == SalientSource::Float32)
        return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), static_cast<const float*>(xb), col, live, 4);
    // A 32-bit gather at 2-byte steps: the low half is the column's int16 (the high one, the next
    // column's, is shifted out; x_int16 carries kInt16Padding zeros past the last block).
    const __m256i words = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), static_cast<const int*>(xb), col,
                                                      _mm256_castps_si256(live), 2);
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(words, 16), 16));
}

/// Sums of q x and of x over a row's salient entries, block by block, 8 entries a step: the
/// in-block columns index the block's activations by a masked gather. Reads up to 7 entries past
/// the row's last (the arrays carry kPackedEntryPadding zero entries at their end). For Int16 the
/// sums are in units of the int16 scale.
template <bool Halves, SalientSource Source>
void salient_sums(const PackedWeights& W, const void* x, std::int64_t r, float& sum_qx, float& sum_x)
{
    using Element = std::conditional_t<Source == SalientSource::Float32, float, std::int16_t>;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const std::uint8_t* count = W.block_count.data() + r * W.blocks;
    __m256 qx = _mm256_setzero_ps(), sx = _mm256_setzero_ps();
    std::int64_t e = W.row_start[static_cast<std::size_t>(r)];
    for (std::int64_t b = 0; b < W.blocks; ++b) {
        const Element* xb = static_cast<const Element*>(x) + b * kPackedBlock;
        const std::int64_t stop = e + count[b];
        for (std::int64_t i = e; i < stop; i += 8) {
            std::int64_t offsets8;
            std::memcpy(&offsets8, W.offsets.data() + i, 8);
            const __m256i col = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(offsets8));
            const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(stop - i)), lane));
            const __m256 xs = gather_block<Source>(xb, col, live);
            __m256 q;
            if (Halves) {
                q = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.values16.data() + i)));
            } else {
                std::int64_t codes8;
                std::memcpy(&codes8, W.codes.data() + i, 8);
                q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(codes8)));
            }
            qx = _mm256_fmadd_ps(_mm256_and_ps(q, live), xs, qx); // past the entries q may be any FP16
            sx = _mm256_add_ps(sx, xs);
        }
        e = stop;
    }
    sum_qx = horizontal_sum(qx);
    sum_x = horizontal_sum(sx);
}

} // namespace

void packed_matvec(const PackedWeights& W, const PackedInput& in, float* y, std::int64_t begin, std::int64_t end)
{
    const std::int64_t words = W.words_per_row();
    const bool int8 = in.precision == PackedActivations::Int8;
    const std::int64_t ahead = packed_prefetch_rows(W);
    for (std::int64_t r = begin; r < std::min(end, begin + ahead); ++r)
        prefetch_packed_row(W, r);
    for (std::int64_t r = begin; r < end; ++r) {
        if (r + ahead < end)
            prefetch_packed_row(W, r + ahead);
        float dense = 0.0f;
        if (W.binarized)
            dense = int8 ? dense_int8(W.signs.data() + r * words, in.x_int8.data(), in.block_scale.data(), W.blocks)
                         : dense_float(W.signs.data() + r * words, in.x.data(), words);
        float sum_qx = 0.0f, sum_x = 0.0f;
        if (W.code_bits == 16) {
            salient_sums<true, SalientSource::Float32>(W, in.x.data(), r, sum_qx, sum_x);
        } else if (int8) {
            salient_sums<false, SalientSource::Int16>(W, in.x_int16.data(), r, sum_qx, sum_x);
            sum_qx *= in.int16_scale;
            sum_x *= in.int16_scale;
        } else {
            salient_sums<false, SalientSource::Float32>(W, in.x.data(), r, sum_qx, sum_x);
        }
        const std::size_t p = static_cast<std::size_t>(r);
        const float mu = half(W.mu[p]), alpha = half(W.alpha[p]), s = half(W.scale[p]);
        const float z = static_cast<float>(W.zero[p]);
        y[r] = (mu - alpha) * (in.group_sums[0] - sum_x) + 2.0f * alpha * dense + s * sum_qx - s * z * sum_x;
    }
}

void fill_signs(const std::uint32_t* words, std::int64_t n, float plus, float minus, float* out)
{
    const __m256i shift = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256 p = _mm256_set1_ps(plus), m = _mm256_set1_ps(minus);
    std::int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const std::uint32_t byte = (words[c / 32] >> (c % 32)) & 0xffu;
        const __m256i bits = _mm256_sllv_epi32(_mm256_set1_epi32(static_cast<int>(byte)), shift);
        _mm256_storeu_ps(out + c, _mm256_blendv_ps(m, p, _mm256_castsi256_ps(bits)));
    }
    for (; c < n; ++c)
        out[c] = ((words[c / 32] >> (c % 32)) & 1u) ? plus : minus;
}

void quantize_blocks_int8(const float* x, std::int64_t blocks, std::int8_t* out, float* scale)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < blocks; ++b) {
        const float* xb = x + b * kPackedBlock;
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < kPackedBlock; j += 8)
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + j)));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 0x55));
        const float top = _mm_cvtss_f32(m);
        scale[b] = top / 127.0f;
        const __m256 inverse = _mm256_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        for (int j = 0; j < kPackedBlock; j += 32) {
            // cvtps rounds to nearest even; packs keep the values (all within [-127, 127]).
            const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j), inverse));
            const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8), inverse));
            const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 16), inverse));
            const __m256i f = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 24), inverse));
            // packs work per 128-bit lane: restore column order with one 32-bit permutation.
            const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, c), _mm256_packs_epi32(d, f));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * kPackedBlock + j),
                                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        }
    }
}

float quantize_int16(const float* x, std::int64_t n, std::int16_t* out)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_setzero_ps();
    std::int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, amax);
    float top = *std::max_element(lanes, lanes + 8);
    for (std::int64_t k = j; k < n; ++k)
        top = std::max(top, std::abs(x[k]));
    const float inverse = top > 0.0f ? 32767.0f / top : 0.0f;
    const __m256 v = _mm256_set1_ps(inverse);
    for (j = 0; j + 16 <= n; j += 16) {
        // cvtps rounds to nearest even; packs works per 128-bit lane, a 64-bit permute restores order.
        const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), v));
        const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), v));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8));
    }
    for (; j < n; ++j)
        out[j] = static_cast<std::int16_t>(std::clamp(std::nearbyint(x[j] * inverse), -32767.0f, 32767.0f));
    return top / 32767.0f;
}

} // namespace pbllm::kernels::avx2
