#pragma once
// llama2.c checkpoints: legacy version 0 (7-int header) and version 1 ("ak42" magic, 256-byte
// header), fp32. Their Q/K rows use interleaved RoPE pairs; the model in memory uses rotate-half.
#include "core/model.h"

#include <string>

namespace pbllm {

/// Reads a version 0 or 1 fp32 checkpoint onto the CPU. Throws Error naming the file and the
/// reason for a truncated file, an impossible header, an unsupported version or NaN weights.
Model load_llama2c(const std::string& path);

/// Writes `model` as a version 1 checkpoint (atomically).
void save_llama2c_v1(const Model& model, const std::string& path);

/// Exact bytes a version 0 file with this configuration has (for size checks and tests).
std::int64_t llama2c_v0_file_size(const ModelConfig& config, bool shared_classifier);

} // namespace pbllm
