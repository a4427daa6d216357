// Compiled with AVX-512 F/BW/VL/VNNI (core/CMakeLists.txt); reached only through the run-time
// check in packed_matvec.cpp, for Linears with one parameter group per row.
//
// The dense 1-bit part selects x by the sign bits as masks: 16 float32 columns per masked add, or
// 64 int8 columns per masked load summed by vpdpbusd. The salient entries are taken 16 (float32)
// or 32 (int16 x for grid codes, summed by vpdpwssd) at a time, their activations picked by
// permutes from the block's 128 held in registers. Masks that vary per step are made by vector
// compares rather than moved from general registers or memory: on Zen 5 those moves cost
// 1.1-1.4x in these loops.
#include "core/kernels/packed_matvec_avx512.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace pbllm::kernels::avx512 {
namespace {

/// The n-th 16- or 64-bit piece of a row's sign words (little-endian: piece j holds the columns
/// from j times its width), as a mask.
template <typename Piece>
Piece sign_piece(const std::uint32_t* words, std::int64_t n)
{
    Piece v;
    std::memcpy(&v, reinterpret_cast<const char*>(words) + n * static_cast<std::int64_t>(sizeof(Piece)), sizeof v);
    return v;
}

/// Sum of x over the set bits of a row's sign plane, float32: each word is broadcast and tested
/// against one bit per lane, and the mask selects 16 columns for a masked add. (Loading the
/// words as masks directly was 1.4x slower on Zen 5: mask loads and shifts are scarce there.)
float dense_float(const std::uint32_t* words, const float* x, std::int64_t word_count)
{
    const __m512i low_bits = _mm512_setr_epi32(1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8,
                                               1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15);
    const __m512i high_bits = _mm512_slli_epi32(low_bits, 16);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (std::int64_t w = 0; w < word_count; w += 2) { // rows hold whole blocks: an even count of words
        const __m512i w0 = _mm512_set1_epi32(static_cast<int>(words[w])), w1 = _mm512_set1_epi32(static_cast<int>(words[w + 1]));
        const float* xw = x + 32 * w;
        a0 = _mm512_mask_add_ps(a0, _mm512_test_epi32_mask(w0, low_bits), a0, _mm512_loadu_ps(xw));
        a1 = _mm512_mask_add_ps(a1, _mm512_test_epi32_mask(w0, high_bits), a1, _mm512_loadu_ps(xw + 16));
        a2 = _mm512_mask_add_ps(a2, _mm512_test_epi32_mask(w1, low_bits), a2, _mm512_loadu_ps(xw + 32));
        a3 = _mm512_mask_add_ps(a3, _mm512_test_epi32_mask(w1, high_bits), a3, _mm512_loadu_ps(xw + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/// The same with int8 activations: a 64-bit mask zeroes the unselected bytes as they are loaded,
/// vpdpbusd sums them (times 1) into int32 lanes, and each 128-column block's sum is scaled once.
float dense_int8(const std::uint32_t* words, const std::int8_t* xq, const float* block_scale, std::int64_t blocks)
{
    const __m512i ones = _mm512_set1_epi8(1);
    __m512 acc = _mm512_setzero_ps();
    for (std::int64_t b = 0; b < blocks; ++b) {
        const __m512i lo = _mm512_maskz_loadu_epi8(sign_piece<std::uint64_t>(words, 2 * b), xq + b * kPackedBlock);
        const __m512i hi = _mm512_maskz_loadu_epi8(sign_piece<std::uint64_t>(words, 2 * b + 1), xq + b * kPackedBlock + 64);
        const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, lo), ones, hi);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(block_scale[b]), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

struct SalientSums {
    float qx = 0.0f, x = 0.0f;
};

/// Sums of q x and of x over row r's salient entries, block by block, 16 entries a step: the
/// block's 128 activations sit in eight registers and the entries' in-block columns pick from
/// them by permutes (bits 0-4 within a pair of registers, bits 5 and 6 by blends). A step may
/// read up to 15 entries past the block's (the next block's or row's, or past the matrix's last
/// entry the arrays' padding); their lanes are zeroed.
SalientSums salient_sums(const PackedWeights& W, const float* x, std::int64_t r)
{
    const __m512i bit5 = _mm512_set1_epi32(32), bit6 = _mm512_set1_epi32(64);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const bool halves = W.code_bits == 16;
    const std::uint8_t* count = W.block_count.data() + r * W.blocks;
    __m512 qx = _mm512_setzero_ps(), sx = _mm512_setzero_ps();
    std::int64_t e = W.row_start[static_cast<std::size_t>(r)];
    for (std::int64_t b = 0; b < W.blocks; ++b) {
        if (count[b] == 0)
            continue;
        const float* xb = x + b * kPackedBlock;
        const __m512 t0 = _mm512_loadu_ps(xb), t1 = _mm512_loadu_ps(xb + 16), t2 = _mm512_loadu_ps(xb + 32),
                     t3 = _mm512_loadu_ps(xb + 48), t4 = _mm512_loadu_ps(xb + 64), t5 = _mm512_loadu_ps(xb + 80),
                     t6 = _mm512_loadu_ps(xb + 96), t7 = _mm512_loadu_ps(xb + 112);
        const std::int64_t stop = e + count[b];
        for (std::int64_t i = e; i < stop; i += 16) {
            const __mmask16 live = _mm512_cmplt_epi32_mask(lane, _mm512_set1_epi32(static_cast<int>(stop - i)));
            const __m512i col = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.offsets.data() + i)));
            const __m512 low = _mm512_mask_blend_ps(_mm512_test_epi32_mask(col, bit5), _mm512_permutex2var_ps(t0, col, t1),
                                                    _mm512_permutex2var_ps(t2, col, t3));
            const __m512 high = _mm512_mask_blend_ps(_mm512_test_epi32_mask(col, bit5), _mm512_permutex2var_ps(t4, col, t5),
                                                     _mm512_permutex2var_ps(t6, col, t7));
            const __m512 xs = _mm512_maskz_mov_ps(live, _mm512_mask_blend_ps(_mm512_test_epi32_mask(col, bit6), low, high));
            const __m512 q = halves ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(W.values16.data() + i)))
                                    : _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.codes.data() + i))));
            qx = _mm512_fmadd_ps(q, xs, qx);
            sx = _mm512_add_ps(sx, xs);
        }
        e = stop;
    }
    return {_mm512_reduce_add_ps(qx), _mm512_reduce_add_ps(sx)};
}

/// Blocks between flushes of the int32 lanes of salient_sums_int16 to float: a block takes at
/// most four 32-entry steps, each adding at most 2 x 255 x 32767 to a lane, so 64 steps stay
/// below 2^31.
constexpr std::int64_t kInt16FlushBlocks = 16;

/// Sums of (q - z) x and of x over row r's salient grid codes, x in int16 units: 32 entries a
/// step, their activations picked by two word permutes (column bits 0-5) from the block's 128
/// int16 in four registers and a blend on bit 6; vpdpwssd multiplies and adds pairs into int32
/// lanes. At 10% salient a block's entries take one step, so the loop branch is predictable.
SalientSums salient_sums_int16(const PackedWeights& W, const std::int16_t* x16, std::int64_t r)
{
    const __m512i bit6 = _mm512_set1_epi16(64), ones = _mm512_set1_epi16(1);
    const __m512i lane = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12,
                                          11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i zero_point = _mm512_set1_epi16(static_cast<short>(W.zero[static_cast<std::size_t>(r)]));
    const std::uint8_t* count = W.block_count.data() + r * W.blocks;
    const std::uint8_t* offsets = W.offsets.data();
    const std::uint8_t* codes = W.codes.data();
    __m512 qx = _mm512_setzero_ps(), sx = _mm512_setzero_ps();
    std::int64_t e = W.row_start[static_cast<std::size_t>(r)];
    for (std::int64_t b0 = 0; b0 < W.blocks; b0 += kInt16FlushBlocks) {
        __m512i qx_int = _mm512_setzero_si512(), sx_int = _mm512_setzero_si512();
        const std::int64_t b1 = std::min(W.blocks, b0 + kInt16FlushBlocks);
        for (std::int64_t b = b0; b < b1; ++b) {
            const std::int16_t* xb = x16 + b * kPackedBlock;
            const __m512i t0 = _mm512_loadu_si512(xb), t1 = _mm512_loadu_si512(xb + 32),
                          t2 = _mm512_loadu_si512(xb + 64), t3 = _mm512_loadu_si512(xb + 96);
            const std::int64_t stop = e + count[b];
            for (std::int64_t i = e; i < stop; i += 32) {
                // Entries past the block's are read (up to 31; padding past the matrix's last), their lanes zeroed.
                const __mmask32 live = _mm512_cmplt_epi16_mask(lane, _mm512_set1_epi16(static_cast<short>(std::min<std::int64_t>(stop - i, 32))));
                const __m512i col = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(offsets + i)));
                const __m512i low = _mm512_maskz_permutex2var_epi16(live, t0, col, t1);
                const __m512i high = _mm512_maskz_permutex2var_epi16(live, t2, col, t3);
                const __m512i xs = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(col, bit6), low, high);
                const __m512i q = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i))), zero_point);
                qx_int = _mm512_dpwssd_epi32(qx_int, q, xs); // dead lanes: xs = 0
                sx_int = _mm512_dpwssd_epi32(sx_int, ones, xs);
            }
            e = stop;
        }
        qx = _mm512_add_ps(qx, _mm512_cvtepi32_ps(qx_int));
        sx = _mm512_add_ps(sx, _mm512_cvtepi32_ps(sx_int));
    }
    return {_mm512_reduce_add_ps(qx), _mm512_reduce_add_ps(sx)};
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
        const auto p = static_cast<std::size_t>(r);
        const float mu = _cvtsh_ss(W.mu[p]), alpha = _cvtsh_ss(W.alpha[p]), scale = _cvtsh_ss(W.scale[p]);
        if (int8 && W.code_bits != 16) {
            const SalientSums s = salient_sums_int16(W, in.x_int16.data(), r); // s.qx holds (q - z) x
            const float g = in.int16_scale;
            y[r] = (mu - alpha) * (in.group_sums[0] - g * s.x) + 2.0f * alpha * dense + scale * g * s.qx;
            continue;
        }
        const SalientSums s = salient_sums(W, in.x.data(), r);
        const float z = static_cast<float>(W.zero[p]);
        y[r] = (mu - alpha) * (in.group_sums[0] - s.x) + 2.0f * alpha * dense + scale * s.qx - scale * z * s.x;
    }
}

} // namespace pbllm::kernels::avx512
