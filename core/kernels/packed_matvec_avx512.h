#pragma once
// The AVX-512 packed kernel behind kernels::packed_matvec_rows; only call it when
// cpu_has_avx512_kernels() (AVX-512 F, BW, VL and VNNI, with the OS saving the registers).
#include "core/kernels/packed_matvec.h"

namespace pbllm::kernels::avx512 {

void packed_matvec(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin, std::int64_t end);

} // namespace pbllm::kernels::avx512
