#pragma once
// The AVX-512 kernels behind kernels::matvec_rows and matvec_int8_rows; only call them when
// cpu_has_avx512_kernels(). Sixteen weights widen per instruction (eight with AVX2), which is
// what bounds an in-cache matrix or an int8 one: the widening, not the memory stream.
#include <cstdint>

namespace pbllm::kernels::avx512 {

void matvec_f32(const float* W, const float* x, float* y, std::int64_t cols, std::int64_t begin, std::int64_t end);
void matvec_f16(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin,
                std::int64_t end);
void matvec_bf16(const std::uint16_t* W, const float* x, float* y, std::int64_t cols, std::int64_t begin,
                 std::int64_t end);
void matvec_int8(const std::int8_t* W, const float* scale, const float* x, float* y, std::int64_t cols,
                 std::int64_t begin, std::int64_t end);

} // namespace pbllm::kernels::avx512
