#include "core/architecture.h"

#include "core/error.h"
#include "core/model.h"

#include <QString>

#include <utility>

namespace pbllm {

const std::vector<Architecture>& architectures()
{
    static const std::vector<Architecture> table = {
        {"llama", "LlamaForCausalLM",
         "Llama 1/2/3/3.1/3.2, TinyLlama, SmolLM: RMSNorm, SwiGLU, rotate-half RoPE (llama3 scaling for 3.1/3.2), "
         "grouped-query attention, tied or untied head",
         false},
        {"mistral", "MistralForCausalLM", "Mistral: the Llama layout with grouped-query attention and a sliding "
                                          "attention window (sequences longer than it are refused)",
         true},
        {"qwen2", "Qwen2ForCausalLM", "Qwen2 / Qwen2.5: the Llama layout with biases on q_proj, k_proj and v_proj "
                                      "(kept in full precision), rope_theta 1e6",
         false, true},
        {"qwen3", "Qwen3ForCausalLM", "Qwen3: the Llama layout with per-head RMSNorm of queries and keys before "
                                      "RoPE (q_norm, k_norm, kept in full precision) and head_dim from the config",
         false, false, true},
    };
    return table;
}

const Architecture& architecture(std::string_view model_type, const std::string& origin)
{
    for (const Architecture& a : architectures())
        if (a.model_type == model_type)
            return a;
    // Families people ask for, with what each would need beyond the Llama layout.
    static const std::pair<std::string_view, std::string_view> known[] = {
        {"qwen3_moe", "a mixture of experts"},
        {"gemma", "embeddings scaled by sqrt(hidden_size), RMSNorm with (1 + weight), GeGLU"},
        {"gemma2", "embeddings scaled by sqrt(hidden_size), RMSNorm with (1 + weight), GeGLU, logit soft-capping "
                   "and sliding-window layers"},
        {"phi3", "fused qkv_proj and gate_up_proj tensors and \"longrope\" scaling"},
        {"mixtral", "a mixture of experts"},
        {"qwen2_moe", "a mixture of experts"},
    };
    std::string supported;
    for (const Architecture& a : architectures())
        supported += (supported.empty() ? "" : ", ") + std::string(a.model_type);
    for (const auto& [type, needs] : known)
        if (type == model_type)
            throw Error(origin + ": model_type '" + std::string(model_type) + "' is not supported: it needs " +
                        std::string(needs) + " (supported: " + supported + ")");
    throw Error(origin + ": model_type '" + std::string(model_type) + "' is not supported (supported: " + supported +
                ")");
}

std::string architecture_details(const ModelConfig& c)
{
    std::string out = c.arch;
    if (c.rope_theta != 10000.0f)
        out += ", rope_theta " + QString::number(static_cast<double>(c.rope_theta), 'g', 10).toStdString();
    const RopeScaling& r = c.rope_scaling;
    if (r.type == RopeScaling::Type::Linear)
        out += ", linear RoPE scaling x" + QString::number(static_cast<double>(r.factor)).toStdString();
    else if (r.type == RopeScaling::Type::Llama3)
        out += ", llama3 RoPE scaling x" + QString::number(static_cast<double>(r.factor)).toStdString() + " from " +
               std::to_string(r.original_max_position) + " positions";
    if (c.explicit_head_dim > 0)
        out += ", head_dim " + std::to_string(c.explicit_head_dim);
    if (c.qkv_bias())
        out += ", q/k/v biases";
    if (c.qk_norm())
        out += ", per-head q/k norms";
    if (c.sliding_window > 0)
        out += ", sliding window " + std::to_string(c.sliding_window);
    return out;
}

} // namespace pbllm
