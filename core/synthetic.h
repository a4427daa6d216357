#pragma once
// Synthetic checkpoints with the shapes of real models, for speed and memory benchmarks only:
// random weights say nothing about quality and are always labelled synthetic.
#include "core/model.h"

#include <cstdint>

namespace pbllm {

/// stories15M: dim 288, 6 layers, 6 heads, hidden 768, vocab 32000, context 256.
ModelConfig stories15m_shape();
/// stories110M: dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, context 1024.
ModelConfig stories110m_shape();

/// Weights ~ N(0, 0.02^2) (untied head), norms 1, on the CPU in float32; source_path says
/// "synthetic".
Model make_synthetic_model(const ModelConfig& config, std::uint64_t seed = 0);

} // namespace pbllm
