#include "core/kernels/packed_matvec.h"

#include "core/kernels/matvec.h"
#include "core/kernels/packed_matvec_avx2.h"
#include "core/kernels/packed_matvec_avx512.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

namespace pbllm::kernels {
namespace {

/// visit(entry, column) for each salient entry of row r in column order.
template <typename Visit>
void for_each_salient(const PackedWeights& W, std::int64_t r, Visit visit)
{
    std::int64_t e = W.row_start[static_cast<std::size_t>(r)];
    for (std::int64_t b = 0; b < W.blocks; ++b)
        for (int n = W.block_count[static_cast<std::size_t>(r * W.blocks + b)]; n > 0; --n, ++e)
            visit(e, b * kPackedBlock + W.offsets[static_cast<std::size_t>(e)]);
}

} // namespace

std::int64_t PackedWeights::resident_bytes() const
{
    return static_cast<std::int64_t>(signs.size() * 4 + (mu.size() + alpha.size() + scale.size()) * 2 + zero.size() +
                                     row_start.size() * 4 + block_count.size() + offsets.size() + codes.size() +
                                     values16.size() * 2);
}

void prepare_packed_input(const PackedWeights& W, const float* x, PackedInput& input)
{
    // Sized once and refilled: a decoding step prepares about ten inputs per layer.
    const auto padded = static_cast<std::size_t>(W.padded_cols());
    input.x.resize(padded);
    std::copy(x, x + W.cols, input.x.begin());
    std::fill(input.x.begin() + W.cols, input.x.end(), 0.0f);
    input.group_sums.resize(static_cast<std::size_t>(W.groups));
    for (std::int64_t g = 0; g < W.groups; ++g) {
        const std::int64_t end = std::min(W.padded_cols(), (g + 1) * W.group_cols());
        float sum = 0.0f;
        for (std::int64_t c = g * W.group_cols(); c < end; ++c)
            sum += input.x[static_cast<std::size_t>(c)];
        input.group_sums[static_cast<std::size_t>(g)] = sum;
    }
    if (input.precision != PackedActivations::Int8)
        return;
    input.x_int8.resize(padded);
    input.block_scale.resize(static_cast<std::size_t>(W.blocks));
    input.x_int16.assign(padded + kInt16Padding, 0);
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_has_avx2_kernels()) {
        avx2::quantize_blocks_int8(input.x.data(), W.blocks, input.x_int8.data(), input.block_scale.data());
        input.int16_scale = avx2::quantize_int16(input.x.data(), W.padded_cols(), input.x_int16.data());
        return;
    }
#endif
    quantize_blocks_int8_reference(input.x.data(), W.blocks, input.x_int8.data(), input.block_scale.data());
    input.int16_scale = quantize_int16_reference(input.x.data(), W.padded_cols(), input.x_int16.data());
}

float quantize_int16_reference(const float* x, std::int64_t n, std::int16_t* out)
{
    float amax = 0.0f;
    for (std::int64_t j = 0; j < n; ++j)
        amax = std::max(amax, std::abs(x[j]));
    const float inverse = amax > 0.0f ? 32767.0f / amax : 0.0f;
    for (std::int64_t j = 0; j < n; ++j) // round half to even, as the SIMD conversion does
        out[j] = static_cast<std::int16_t>(std::clamp(std::nearbyint(x[j] * inverse), -32767.0f, 32767.0f));
    return amax / 32767.0f;
}

void quantize_blocks_int8_reference(const float* x, std::int64_t blocks, std::int8_t* out, float* scale)
{
    for (std::int64_t b = 0; b < blocks; ++b) {
        const float* xb = x + b * kPackedBlock;
        float amax = 0.0f;
        for (int j = 0; j < kPackedBlock; ++j)
            amax = std::max(amax, std::abs(xb[j]));
        const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        scale[b] = amax / 127.0f;
        for (int j = 0; j < kPackedBlock; ++j) // round half to even, as the SIMD conversion does
            out[b * kPackedBlock + j] = saturate_int8(std::nearbyint(xb[j] * inverse));
    }
}

void packed_matvec_rows_reference(const PackedWeights& W, const PackedInput& in, float* y, std::int64_t begin,
                                  std::int64_t end)
{
    const float* x = in.x.data();
    const std::int64_t words = W.words_per_row();
    const bool int8 = in.precision == PackedActivations::Int8;
    const bool int16_salient = int8 && W.code_bits != 16;
    std::vector<float> sum_qx(static_cast<std::size_t>(W.groups)), sum_x(sum_qx.size());
    for (std::int64_t r = begin; r < end; ++r) {
        // Salient entries, summed per group.
        std::fill(sum_qx.begin(), sum_qx.end(), 0.0f);
        std::fill(sum_x.begin(), sum_x.end(), 0.0f);
        for_each_salient(W, r, [&](std::int64_t e, std::int64_t col) {
            const std::size_t g = static_cast<std::size_t>(col / W.group_cols());
            const float q = W.code_bits == 16 ? f16_to_float(W.values16[static_cast<std::size_t>(e)])
                                              : static_cast<float>(W.codes[static_cast<std::size_t>(e)]);
            const float xc = int16_salient ? static_cast<float>(in.x_int16[static_cast<std::size_t>(col)]) : x[col];
            sum_qx[g] += q * xc;
            sum_x[g] += xc;
        });
        if (int16_salient)
            for (std::size_t g = 0; g < sum_qx.size(); ++g) {
                sum_qx[g] *= in.int16_scale;
                sum_x[g] *= in.int16_scale;
            }
        const std::uint32_t* signs = W.signs.data() + r * words;
        float out = 0.0f;
        for (std::int64_t g = 0; g < W.groups; ++g) {
            const std::int64_t b0 = g * W.group_blocks, b1 = std::min(W.blocks, b0 + W.group_blocks);
            float dense = 0.0f; // sum of x where the sign bit is 1
            for (std::int64_t b = b0; b < b1; ++b) {
                float block = 0.0f;
                std::int32_t block_int = 0;
                for (std::int64_t c = b * kPackedBlock; c < (b + 1) * kPackedBlock; ++c)
                    if ((signs[c / 32] >> (c % 32)) & 1u) {
                        block += x[c];
                        block_int += int8 ? in.x_int8[static_cast<std::size_t>(c)] : 0;
                    }
                dense += int8 ? static_cast<float>(block_int) * in.block_scale[static_cast<std::size_t>(b)] : block;
            }
            const std::size_t p = static_cast<std::size_t>(r * W.groups + g);
            const float mu = f16_to_float(W.mu[p]), alpha = f16_to_float(W.alpha[p]);
            const float s = f16_to_float(W.scale[p]), z = static_cast<float>(W.zero[p]);
            const auto gi = static_cast<std::size_t>(g);
            out += (mu - alpha) * (in.group_sums[gi] - sum_x[gi]) + 2.0f * alpha * dense + s * sum_qx[gi] -
                   s * z * sum_x[gi];
        }
        y[r] = out;
    }
}

std::vector<PackedKernel> available_packed_kernels()
{
    std::vector<PackedKernel> kernels{PackedKernel::Reference};
    if (cpu_has_avx2_kernels())
        kernels.push_back(PackedKernel::Avx2);
    if (cpu_has_avx512_kernels())
        kernels.push_back(PackedKernel::Avx512);
    return kernels;
}

const char* packed_kernel_name(PackedKernel kernel)
{
    switch (kernel) {
    case PackedKernel::Avx2: return "avx2-fma-f16c";
    case PackedKernel::Avx512: return "avx512-vnni";
    case PackedKernel::Reference: break;
    }
    return "reference";
}

PackedKernel preferred_packed_kernel()
{
    static const PackedKernel preferred = [] {
        const std::vector<PackedKernel> kernels = available_packed_kernels();
        const char* wanted = std::getenv("PBLLM_PACKED_KERNEL");
        const std::string name = wanted ? wanted : "";
        for (PackedKernel k : kernels)
            if (!name.empty() && std::string(packed_kernel_name(k)).rfind(name, 0) == 0)
                return k;
        return kernels.back();
    }();
    return preferred;
}

const char* packed_kernel_name() { return packed_kernel_name(preferred_packed_kernel()); }

void packed_matvec_rows(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin, std::int64_t end,
                        PackedKernel kernel)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (W.groups == 1 && kernel == PackedKernel::Avx512)
        return avx512::packed_matvec(W, x, y, begin, end);
    if (W.groups == 1 && kernel == PackedKernel::Avx2)
        return avx2::packed_matvec(W, x, y, begin, end);
#endif
    packed_matvec_rows_reference(W, x, y, begin, end);
}

void packed_matvec_rows(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin, std::int64_t end)
{
    packed_matvec_rows(W, x, y, begin, end, preferred_packed_kernel());
}

void packed_dequantize_rows(const PackedWeights& W, float* out, std::int64_t begin, std::int64_t end)
{
    const std::int64_t words = W.words_per_row();
    const std::int64_t group_cols = W.group_blocks * kPackedBlock;
    for (std::int64_t r = begin; r < end; ++r) {
        float* row = out + (r - begin) * W.cols;
        const std::uint32_t* signs = W.signs.data() + r * words;
        for (std::int64_t g = 0; g < W.groups; ++g) {
            const std::size_t p = static_cast<std::size_t>(r * W.groups + g);
            const float mu = f16_to_float(W.mu[p]), alpha = f16_to_float(W.alpha[p]);
            const float plus = mu + alpha, minus = mu - alpha;
            const std::int64_t begin_col = g * group_cols, end_col = std::min(W.cols, (g + 1) * group_cols);
#if defined(__x86_64__) && defined(__GNUC__)
            if (cpu_has_avx2_kernels()) { // groups start on whole words
                avx2::fill_signs(signs + begin_col / 32, end_col - begin_col, plus, minus, row + begin_col);
                continue;
            }
#endif
            for (std::int64_t c = begin_col; c < end_col; ++c)
                row[c] = ((signs[c / 32] >> (c % 32)) & 1u) ? plus : minus;
        }
        for_each_salient(W, r, [&](std::int64_t e, std::int64_t col) {
            const std::size_t p = static_cast<std::size_t>(r * W.groups + col / group_cols);
            row[col] = W.code_bits == 16 ? f16_to_float(W.values16[static_cast<std::size_t>(e)])
                                         : f16_to_float(W.scale[p]) *
                                               (static_cast<float>(W.codes[static_cast<std::size_t>(e)]) -
                                                static_cast<float>(W.zero[p]));
        });
    }
}

std::int64_t packed_prefetch_rows(const PackedWeights& W)
{
    constexpr double kBytesAhead = 3072.0; // measured: 2 rows of 4096 columns, 1 of 11008
    const double entry_bytes = W.code_bits == 16 ? 3.0 : 2.0;
    const double row_bytes = static_cast<double>(W.words_per_row() * 4 + W.blocks) +
                             entry_bytes * static_cast<double>(W.salient) / static_cast<double>(std::max<std::int64_t>(W.rows, 1));
    return std::clamp<std::int64_t>(std::llround(kBytesAhead / row_bytes), 1, 16);
}

void prefetch_packed_row(const PackedWeights& W, std::int64_t r)
{
    if (r < 0 || r >= W.rows)
        return;
    constexpr std::int64_t kLine = 64;
    // Every line a row's bytes touch, the last included: rows need not start on a line.
    auto lines = [](const void* begin, std::int64_t bytes) {
        const auto* p = static_cast<const char*>(begin);
        for (std::int64_t o = 0; o < bytes; o += kLine)
            __builtin_prefetch(p + o);
        __builtin_prefetch(p + bytes - 1);
    };
    lines(W.signs.data() + r * W.words_per_row(), W.words_per_row() * 4);
    lines(W.block_count.data() + r * W.blocks, W.blocks);
    const std::int64_t e0 = W.row_start[static_cast<std::size_t>(r)], e1 = W.row_start[static_cast<std::size_t>(r + 1)];
    for (std::int64_t e = e0; e < e1 + kLine; e += kLine) {
        const std::int64_t i = std::min(e, e1);
        __builtin_prefetch(W.offsets.data() + i);
        if (W.code_bits == 16) {
            __builtin_prefetch(W.values16.data() + i);
            __builtin_prefetch(W.values16.data() + i + kLine / 2);
        } else {
            __builtin_prefetch(W.codes.data() + i);
        }
    }
}

double packed_row_cost(const PackedWeights& W, std::int64_t r)
{
    // A dense 32-column word (float32 activations) and about three salient entries cost alike in
    // the AVX2 and AVX-512 kernels (bench --suite packed).
    return static_cast<double>(r) * static_cast<double>(W.binarized ? W.words_per_row() : 0) +
           0.3 * static_cast<double>(W.row_start[static_cast<std::size_t>(r)]);
}

} // namespace pbllm::kernels
