#pragma once
// Shared by the fuzz targets: the tiny model shape their seeds use, and a scratch file that
// the path-based readers read each input from.
#include "core/model.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace pbllm::fuzz {

/// dim 16, hidden 32, 1 layer, 2 heads, vocab 32, context 16: seeds stay a few KB.
ModelConfig tiny_config();

/// Writes bytes to a per-process scratch file (in $TMPDIR or /tmp) and returns its path.
std::string scratch_file(const std::uint8_t* data, std::size_t size, const std::string& suffix);

} // namespace pbllm::fuzz
