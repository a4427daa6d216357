#pragma once
// How PB-LLM's layout (pb-gptq, rtn, gptq, qat) is stored in a packed checkpoint:
//   /linear/<name>/ attributes salient_bits (the grid's bits, 16 = FP16 codes), groupsize,
//                   salient_ratio_requested, salient_count, index_encoding, rice_k;
//                   index (salient positions), codes (salient_bits per salient weight),
//                   signs (one bit per other weight), grid_scale (FP16) and grid_zero (uint8) per
//                   row and grid group unless FP16 codes, mu and alpha (FP16) per row and
//                   statistics group unless plain GPTQ.
#include "core/hdf5_io.h"
#include "core/packed_checkpoint.h"

namespace pbllm {

void pack_partial_binary(const QuantizedLinear& q, PackedLinear& p);
void validate_partial_binary_fields(const PackedLinear& p, const std::string& what);
QuantizedLinear unpack_partial_binary(const PackedLinear& p, const std::string& what);
void write_partial_binary(const Writer& w, hid_t group, const PackedLinear& p);
void read_partial_binary(const Reader& r, hid_t group, PackedLinear& p, const std::string& what);

} // namespace pbllm
