#pragma once
// Text generation with streaming, timing and a seeded sampler.
#include "core/decoder.h"
#include "core/sampler.h"
#include "core/tokenizer.h"

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace pbllm {

struct GenerationSettings {
    int max_new_tokens = 256;
    SamplerSettings sampler;
    bool stop_at_eos = true; ///< stop on EOS or BOS, as llama2.c does
    DecoderBackend backend = DecoderBackend::Auto;
    DecoderOptions decoder; ///< int8 activations or head (CPU decoder)
};

struct GenerationResult {
    std::string prompt;
    std::string completion;        ///< generated text only
    std::string text;              ///< prompt + completion, as llama2.c prints it
    std::vector<int> prompt_tokens; ///< with BOS
    std::vector<int> tokens;       ///< generated ids
    double seconds = 0.0;          ///< whole call
    double time_to_first_token = 0.0; ///< prompt processing + first sample
    double tokens_per_second = 0.0;   ///< generated tokens after the first / time after the first
    bool cancelled = false;
};

/// Receives each generated token and the text it completed; returning false stops generation.
using TokenCallback = std::function<bool(int token, std::string_view text)>;

/// Encodes `prompt` with BOS, runs it through a fresh decoder and samples until max_new_tokens,
/// EOS, the context limit or the callback says stop.
GenerationResult generate(const Model& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerationSettings& settings, const TokenCallback& on_token = {});

} // namespace pbllm
