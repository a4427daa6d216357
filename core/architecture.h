#pragma once
// The architecture table: one row per supported config.json "model_type", saying what the family
// differs in from Llama 2. Loaders, the converters, the packed format and the Model page read the
// row instead of assuming Llama; a model type without a row is refused with what it would need.
#include <string>
#include <string_view>
#include <vector>

namespace pbllm {

struct Architecture {
    std::string_view model_type; ///< config.json "model_type" (also stored in packed files)
    std::string_view hf_class;   ///< config.json "architectures" entry written on export
    std::string_view summary;    ///< for people: what sets the family apart
    /// config.json may set "sliding_window" (Mistral): attention limited to that many positions.
    /// Sequences longer than the window are refused (full causal attention equals windowed
    /// attention up to the window's length, and is silently wrong past it).
    bool sliding_window = false;
    bool qkv_bias = false; ///< q_proj, k_proj and v_proj carry biases (Qwen2)
    bool qk_norm = false;  ///< per-head RMSNorm of queries and keys before RoPE (Qwen3)
};

/// Every supported architecture, Llama first.
const std::vector<Architecture>& architectures();

/// The row of `model_type`; throws Error naming `origin`, the model type and, for families known
/// here but not supported, what they need (fused tensors, extra norms, experts, ...).
const Architecture& architecture(std::string_view model_type, const std::string& origin);

struct ModelConfig;
/// The model type and what departs from Llama 2's defaults, for people: "llama, rope_theta 500000,
/// llama3 RoPE scaling x8 from 8192 positions" or "mistral, sliding window 4096".
std::string architecture_details(const ModelConfig& config);

} // namespace pbllm
