#include "core/generation.h"

#include "core/error.h"
#include "core/system.h"

#include <c10/core/InferenceMode.h>

#include <chrono>

namespace pbllm {

GenerationResult generate(const Model& model, const Tokenizer& tokenizer, const std::string& prompt,
                          const GenerationSettings& settings, const TokenCallback& on_token)
{
    if (settings.max_new_tokens < 0)
        throw Error("the number of tokens to generate must be >= 0");
    // Padded embeddings (Qwen2.5: 151936 rows for 151665 tokens) are fine; more tokens than rows are not.
    if (tokenizer.vocab_size() > model.config.vocab_size)
        throw Error(tokenizer.origin() + ": tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                    " tokens but the model has " + std::to_string(model.config.vocab_size));
    const int sampled_vocab = tokenizer.vocab_size(); // rows past it are padding: never sampled
    c10::InferenceMode inference;
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();

    GenerationResult result;
    result.prompt = prompt;
    result.prompt_tokens = tokenizer.encode(prompt, /*add_bos=*/true);
    const std::int64_t context = model.config.usable_context();
    const std::int64_t prompt_length = static_cast<std::int64_t>(result.prompt_tokens.size());
    if (prompt_length >= context)
        throw Error("the prompt has " + std::to_string(prompt_length) + " tokens; the model's context is " +
                    std::to_string(context));
    // The KV cache holds what this run can reach, not the whole context (a 7B model's full
    // 2048-token float32 cache is 2 GiB).
    auto decoder = make_decoder(model, settings.backend,
                                static_cast<int>(std::min<std::int64_t>(context, prompt_length + settings.max_new_tokens)),
                                settings.decoder);
    Sampler sampler(settings.sampler);
    StreamingDetokenizer detok(tokenizer);
    for (int id : result.prompt_tokens)
        result.text += detok.push(id);

    const float* logits = nullptr;
    for (int id : result.prompt_tokens) {
        adapt_threads_to_load();
        logits = decoder->step(id);
    }
    Clock::time_point first{};
    while (static_cast<int>(result.tokens.size()) < settings.max_new_tokens) {
        const int next = sampler.sample(logits, sampled_vocab);
        if (result.tokens.empty()) {
            first = Clock::now();
            result.time_to_first_token = std::chrono::duration<double>(first - start).count();
        }
        if (settings.stop_at_eos && (tokenizer.is_stop(next) || next == tokenizer.bos_id()))
            break;
        result.tokens.push_back(next);
        const std::string piece = detok.push(next);
        result.completion += piece;
        if (on_token && !on_token(next, piece)) {
            result.cancelled = true;
            break;
        }
        if (decoder->position() >= decoder->capacity())
            break;
        if (static_cast<int>(result.tokens.size()) < settings.max_new_tokens) {
            adapt_threads_to_load();
            logits = decoder->step(next);
        }
    }
    const std::string rest = detok.flush();
    result.completion += rest;
    if (on_token && !rest.empty() && !result.cancelled)
        on_token(-1, rest);
    result.text += result.completion;
    const auto end = Clock::now();
    result.seconds = std::chrono::duration<double>(end - start).count();
    if (result.tokens.size() > 1)
        result.tokens_per_second =
            static_cast<double>(result.tokens.size() - 1) / std::chrono::duration<double>(end - first).count();
    return result;
}

} // namespace pbllm
