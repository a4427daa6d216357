#pragma once
// Codes of the block binarizers (BiLLM, and ARB-LLM after it): per block of columns, a column
// bitmap of salient columns binarized to second order, and a group bitmap splitting the rest
// into a concentrated and a sparse group binarized apart, with FP16 parameters per row and block.
#include "core/quantizers.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace pbllm {

/// Row parameters of one block (FP16-representable floats, in this order).
enum BlockParam : int {
    kSalientAlpha1, kSalientMu1, kSalientAlpha2, kSalientMu2, ///< salient columns, orders 1 and 2
    kConcentratedAlpha, kConcentratedMu,                       ///< non-salient, |score| < break point
    kSparseAlpha, kSparseMu,                                   ///< non-salient, |score| >= break point
    kBlockParams
};

/// The dequantized value of one weight: the single definition that the quantizer's output and
/// every reader use (`p` = its row's parameters in its block).
inline float block_binary_value(bool salient, bool sparse, bool sign1, bool sign2, const float* p)
{
    if (salient)
        return binary_value(sign1, p[kSalientMu1], p[kSalientAlpha1]) + binary_value(sign2, p[kSalientMu2], p[kSalientAlpha2]);
    return sparse ? binary_value(sign1, p[kSparseMu], p[kSparseAlpha])
                  : binary_value(sign1, p[kConcentratedMu], p[kConcentratedAlpha]);
}

/// BiLLM's codes of one Linear (rows, cols), in blocks of `block` columns (the last may be shorter).
struct BlockBinaryCodes {
    int block = 128;
    at::Tensor salient_cols; ///< bool (cols): the column bitmap
    at::Tensor sparse;       ///< bool (rows, cols): the group bitmap (false at salient columns)
    at::Tensor sign1;        ///< bool (rows, cols): first-order sign, true = +1
    at::Tensor sign2;        ///< bool (rows, cols): second-order sign at salient columns, false elsewhere
    at::Tensor params;       ///< float32 (rows, blocks, kBlockParams)

    std::int64_t blocks(std::int64_t cols) const { return (cols + block - 1) / block; }
    /// Throws Error naming `what` when shapes or parameters are inconsistent.
    void validate(std::int64_t rows, std::int64_t cols, const std::string& what) const;
    at::Tensor dequantize(std::int64_t rows, std::int64_t cols) const;
};

} // namespace pbllm
