#pragma once
// The x86 kernels behind kernels::matvec_rows; only call them when the CPU has AVX2, FMA and F16C.
#include <cstdint>

namespace pbllm::kernels::avx2 {

void matvec_f32(const float* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end);
void matvec_f16(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin,
                std::int64_t end);
void matvec_bf16(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin,
                 std::int64_t end);

void matvec_int8(const std::int8_t* W, const float* scale, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end);

} // namespace pbllm::kernels::avx2
