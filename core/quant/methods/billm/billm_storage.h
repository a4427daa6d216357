#pragma once
// How a block binarizer's Linear (billm, arb, arb-x, arb-rc) is stored in a packed checkpoint,
// beside PB-LLM's layout (the method's BlockBinaryLayout fixes the counts):
//   /linear/<name>/ attributes rows, cols, method, binarizer, salient_bits (2), groupsize (0),
//                   salient_ratio_requested, salient_count, block
//                   column_bitmap (uint8, one bit per column), group_bitmap (one bit per non-salient
//                   weight; per weight under CGB), signs (one bit per weight), signs2 (one bit per
//                   salient weight), block_params (FP16, rows x blocks * row_params(): BlockParam or
//                   RowColumnRowParam), column_params (FP16, ARB-RC only: per column its
//                   column_params(), in slot order)
#include "core/hdf5_io.h"
#include "core/packed_checkpoint.h"

namespace pbllm {

void pack_block_binary(const QuantizedLinear& q, PackedLinear& p);
/// Sizes and counts (the column bitmap's count included); Error names `what`.
void validate_block_binary_fields(const PackedLinear& p, const std::string& what);
/// Validates everything and rebuilds the Linear, `dequantized` included.
QuantizedLinear unpack_block_binary(const PackedLinear& p, const std::string& what);
void write_block_binary(const Writer& w, hid_t group, const PackedLinear& p);
/// Reads the payload of the group whose rows, cols and method `p` already holds.
void read_block_binary(const Reader& r, hid_t group, PackedLinear& p, const std::string& what);

} // namespace pbllm
