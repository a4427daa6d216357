#pragma once
// Codes of the block binarizers (BiLLM, and ARB-LLM after it): per block of columns, a column
// bitmap of salient columns binarized to second order, and a group bitmap splitting weights into
// a concentrated and a sparse group binarized apart, with FP16 parameters per row and block
// (and, for ARB-RC, per column).
#include "core/quantizers.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace pbllm {

/// What a method's codes hold beyond BiLLM's.
struct BlockBinaryLayout {
    /// CGB (ARB-LLM's column-group bitmap): the group bitmap splits the salient columns too, into
    /// a concentrated and a sparse group each binarized to second order.
    bool split_salient = false;
    /// ARB-RC: w = a_i c_j B per order (a row scale per block, a column scale), no mean.
    bool row_column = false;
    /// row_column only: the scales stored as 8-bit codes against one base per block and kind
    /// (rows, columns) instead of FP16 (see log8_value).
    bool log8_scales = false;

    /// FP16 parameters per row and block.
    int row_params() const { return row_column ? (split_salient ? 6 : 4) : (split_salient ? 12 : 8); }
    /// FP16 parameters stored for a column (row_column only): salient columns carry two orders
    /// per salient group, the others one per group.
    int column_params(bool salient) const { return !row_column ? 0 : salient ? (split_salient ? 4 : 2) : 2; }
    bool operator==(const BlockBinaryLayout& o) const
    {
        return split_salient == o.split_salient && row_column == o.row_column && log8_scales == o.log8_scales;
    }
};

/// Row parameters of one block (FP16-representable floats). Mean-and-scale layouts (BiLLM, ARB,
/// ARB-X) in this order; the split salient columns' sparse group (CGB) follows.
enum BlockParam : int {
    kSalientAlpha1, kSalientMu1, kSalientAlpha2, kSalientMu2, ///< salient columns, orders 1 and 2
    kConcentratedAlpha, kConcentratedMu,                       ///< non-salient, |score| < break point
    kSparseAlpha, kSparseMu,                                   ///< non-salient, |score| >= break point
    kBlockParams,                                              ///< BiLLM's count
    kSalientSparseAlpha1 = kBlockParams, kSalientSparseMu1, kSalientSparseAlpha2, kSalientSparseMu2,
    kMaxBlockParams
};
/// Row scales of the row-column layout (ARB-RC), per row and block.
enum RowColumnRowParam : int {
    kRcSalientA1, kRcSalientA2, kRcConcentratedA, kRcSparseA, kRcSalientSparseA1, kRcSalientSparseA2
};
/// Column scales of the row-column layout, per column: the group a weight is in picks the pair.
enum RowColumnColumnParam : int {
    kRcColumn1,       ///< order 1 of the concentrated (or only) group
    kRcColumn2,       ///< its order 2 (salient columns)
    kRcColumnSparse1, ///< order 1 of the sparse group
    kRcColumnSparse2, ///< its order 2 (salient columns under CGB)
    kRcColumnParams
};

/// An 8-bit scale code: 0 is 0, k = 1..255 is base * 2^((k - 255) / 16), 16 octaves below
/// `base` (the largest scale of its block and kind) in steps of 2^(1/16) = 4.4%.
float log8_value(float base, std::uint8_t code);
/// The code whose value is nearest `value` (>= 0): log8_value(base, log8_code(v, base)) == v
/// for every v that log8_value produced, so codes survive a round trip.
std::uint8_t log8_code(float value, float base);

inline float signed_one(bool positive) { return positive ? 1.0f : -1.0f; }

/// The dequantized value of one weight: the single definition that the quantizer's output and
/// every reader use. `p` = its row's parameters in its block, `c` = its column's (row_column).
inline float block_binary_value(const BlockBinaryLayout& layout, bool salient, bool sparse, bool sign1, bool sign2,
                                const float* p, const float* c)
{
    if (layout.row_column) {
        if (salient) {
            const bool s = layout.split_salient && sparse;
            return p[s ? kRcSalientSparseA1 : kRcSalientA1] * c[s ? kRcColumnSparse1 : kRcColumn1] * signed_one(sign1) +
                   p[s ? kRcSalientSparseA2 : kRcSalientA2] * c[s ? kRcColumnSparse2 : kRcColumn2] * signed_one(sign2);
        }
        return sparse ? p[kRcSparseA] * c[kRcColumnSparse1] * signed_one(sign1)
                      : p[kRcConcentratedA] * c[kRcColumn1] * signed_one(sign1);
    }
    if (salient) {
        const int o = layout.split_salient && sparse ? kSalientSparseAlpha1 : kSalientAlpha1;
        return binary_value(sign1, p[o + 1], p[o]) + binary_value(sign2, p[o + 3], p[o + 2]);
    }
    return sparse ? binary_value(sign1, p[kSparseMu], p[kSparseAlpha])
                  : binary_value(sign1, p[kConcentratedMu], p[kConcentratedAlpha]);
}

/// A block binarizer's codes of one Linear (rows, cols), in blocks of `block` columns (the last
/// may be shorter).
struct BlockBinaryCodes {
    BlockBinaryLayout layout;
    int block = 128;
    at::Tensor salient_cols;  ///< bool (cols): the column bitmap
    at::Tensor sparse;        ///< bool (rows, cols): the group bitmap (false at salient columns unless split_salient)
    at::Tensor sign1;         ///< bool (rows, cols): first-order sign, true = +1
    at::Tensor sign2;         ///< bool (rows, cols): second-order sign at salient columns, false elsewhere
    at::Tensor params;        ///< float32 (rows, blocks, layout.row_params())
    at::Tensor column_params; ///< float32 (cols, kRcColumnParams), row_column only (unused entries 0)
    at::Tensor scale_bases;   ///< float32 (blocks, 2): log8 bases of the row and the column scales (log8 only)

    std::int64_t blocks(std::int64_t cols) const { return (cols + block - 1) / block; }
    /// Throws Error naming `what` when shapes or parameters are inconsistent.
    void validate(std::int64_t rows, std::int64_t cols, const std::string& what) const;
    at::Tensor dequantize(std::int64_t rows, std::int64_t cols) const;
};

} // namespace pbllm
