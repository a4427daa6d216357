#pragma once
// How a method's Linears are stored in a packed checkpoint: each registry row points at one of
// these (PB-LLM's layout for pb-gptq, rtn, gptq and qat; the block-binary codes for billm, arb,
// arb-x and arb-rc). The packed checkpoint writes and reads the common fields (rows, cols,
// method, binarizer, salient_bits, groupsize, salient_ratio_requested, salient_count)
// itself and checks the shape; everything else of a Linear goes through its payload.
#include "core/hdf5_io.h"
#include "core/packed_checkpoint.h"

#include <string>

namespace pbllm {

struct PackedPayload {
    /// Fills `p` (name, rows, cols, method, binarizer, grid_bits and salient_ratio_requested set).
    void (*pack)(const QuantizedLinear& q, PackedLinear& p);
    /// Sizes, counts and parameters of `p` (its shape already checked); Error names `what`.
    void (*validate)(const PackedLinear& p, const std::string& what);
    /// Rebuilds the Linear, `dequantized` included, from fields validate() accepted.
    QuantizedLinear (*unpack)(const PackedLinear& p, const std::string& what);
    /// The group's attributes and datasets beyond the common fields.
    void (*write)(const Writer& w, hid_t group, const PackedLinear& p);
    /// Fills `p` (name and the common fields set) from the group.
    void (*read)(const Reader& r, hid_t group, PackedLinear& p, const std::string& what);
    /// One Linear's bits per weight in the conventions that depend on the layout (headline, with
    /// bitmap, with index; METHOD.md section 6); `measured` is the stored bytes for every layout.
    BitsPerWeight (*conventions)(const LinearBits& l);
    /// An upper bound of the stored bits per weight of a rows x cols Linear under `s` and the
    /// solver's block and group sizes (the streamed quantizer's memory plan).
    double (*stored_bits_bound)(const LayerQuantSettings& s, std::int64_t rows, std::int64_t cols, int blocksize,
                                int groupsize);
};

/// PB-LLM's layout: sparse index, salient codes on a row grid, signs, FP16 statistics.
const PackedPayload& partial_binary_payload();
/// Block-binary codes: column and group bitmaps, signs of both orders, row (and column) parameters.
const PackedPayload& block_binary_payload();

} // namespace pbllm
