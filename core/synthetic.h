#pragma once
// Synthetic checkpoints with the shapes of real models, for speed and memory benchmarks only:
// random weights say nothing about quality and are always labelled synthetic.
#include "core/model.h"
#include "core/progress.h"

#include <cstdint>
#include <string>
#include <vector>

namespace pbllm {

/// stories15M: dim 288, 6 layers, 6 heads, hidden 768, vocab 32000, context 256.
ModelConfig stories15m_shape();
/// stories110M: dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, context 1024.
ModelConfig stories110m_shape();

/// TinyLlama-1.1B: dim 2048, 22 layers, 32 heads (4 KV heads), hidden 5632, vocab 32000, context 2048.
ModelConfig tinyllama_1b_shape();
/// LLaMA-7B: dim 4096, 32 layers, 32 heads, hidden 11008, vocab 32000, context 2048.
ModelConfig llama_7b_shape();

/// A named shape: "stories15m", "stories110m", "smollm-135m", "qwen2.5-0.5b", "tinyllama-1.1b", "llama-3.2-1b",
/// "llama-7b", "mistral-7b", "llama-3.1-8b".
struct NamedShape {
    std::string name;
    ModelConfig config;
};
const std::vector<NamedShape>& synthetic_shapes();
/// The shape called `name`; Error listing the known names otherwise.
ModelConfig synthetic_shape(const std::string& name);

struct SyntheticHfSpec {
    ModelConfig config;
    std::string shape_name;      ///< for the label ("tinyllama-1.1b")
    at::ScalarType dtype = at::kHalf; ///< F16, BF16 or F32
    std::uint64_t seed = 0;
    std::string tokenizer_path;  ///< copied in as tokenizer.model when set
};

/// Writes a Hugging Face folder (config.json, model.safetensors, tokenizer.model) of random
/// N(0, 0.02^2) weights with the given shape, streaming one tensor at a time (memory: the largest
/// tensor in float32), the safetensors file atomically. config.json and the safetensors metadata
/// carry "pbllm_synthetic", which the loader reports: for speed and memory benchmarks only.
/// Refuses a folder that is not empty, and a disk without room for the file.
void write_synthetic_hf(const SyntheticHfSpec& spec, const std::string& dir, const ProgressFn& progress = {});

/// Weights ~ N(0, 0.02^2) (untied head), norms 1, on the CPU in float32; source_path says
/// "synthetic".
Model make_synthetic_model(const ModelConfig& config, std::uint64_t seed = 0);

} // namespace pbllm
