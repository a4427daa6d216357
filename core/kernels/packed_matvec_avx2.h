#pragma once
// The x86 packed kernel behind kernels::packed_matvec_rows; only call it when the CPU has AVX2,
// FMA and F16C.
#include "core/kernels/packed_matvec.h"

namespace pbllm::kernels::avx2 {

void packed_matvec(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin, std::int64_t end);
/// out[c] = bit c of the sign words ? plus : minus, for columns [0, n) (words start at column 0).
void fill_signs(const std::uint32_t* words, std::int64_t n, float plus, float minus, float* out);
void quantize_blocks_int8(const float* x, std::int64_t blocks, std::int8_t* out, float* scale);
/// quantize_int16_reference, vectorised (the same values bit for bit).
float quantize_int16(const float* x, std::int64_t n, std::int16_t* out);

} // namespace pbllm::kernels::avx2
