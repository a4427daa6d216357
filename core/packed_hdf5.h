#pragma once
// A PackedLinear as an HDF5 group (/linear/<name> of a packed checkpoint, and the per-layer
// files of an interrupted quantization). Internal to core.
#include "core/hdf5_io.h"
#include "core/packed_checkpoint.h"

#include <string>

namespace pbllm {

void write_packed_linear(const Writer& writer, hid_t parent, const PackedLinear& linear);
/// Reads group `name` under `parent`, refusing another shape than `expected_rows_cols` when given;
/// sizes are bounded by the file, their consistency is checked by unpack_linear. Errors start
/// with `what`.
PackedLinear read_packed_linear(const Reader& reader, hid_t parent, const std::string& name, const std::string& what,
                                const std::int64_t* expected_rows_cols = nullptr);

} // namespace pbllm
