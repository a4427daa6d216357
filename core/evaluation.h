#pragma once
// Perplexity by the GPTQ convention (../shared/docs/EVALUATION.md): whole text tokenized once
// without BOS, non-overlapping windows of seqlen tokens, remainder dropped.
#include "core/model.h"
#include "core/progress.h"

#include <string>
#include <vector>

namespace pbllm {

/// A text file as UTF-8 with CRLF normalised to LF; throws Error naming the file if it cannot be
/// read or is not valid UTF-8.
std::string read_text_file(const std::string& path);

struct PerplexitySettings {
    int seqlen = 0;      ///< 0 = the model's context length
    int max_windows = 0; ///< 0 = all windows
    int batch = 0;       ///< windows per forward pass; 0 = chosen from a memory budget
};

struct EvalResult {
    double ppl = 0.0;
    double mean_nll = 0.0;      ///< nats per predicted token
    std::int64_t windows = 0;
    std::int64_t tokens = 0;    ///< predicted tokens = windows * (seqlen - 1)
    int seqlen = 0;
    double seconds = 0.0;
    double tokens_per_second = 0.0; ///< window tokens processed per second
};

/// Perplexity of `model` on `tokens`. Progress is reported per batch; cancelling throws Cancelled.
EvalResult evaluate_perplexity(const Model& model, const std::vector<int>& tokens,
                               const PerplexitySettings& settings = {}, const ProgressFn& progress = {});

/// Mean negative log-likelihood (nats) the model assigns to tokens[first..] given the tokens before
/// each: how surprised a reference model is by another model's output. Needs first >= 1 and at
/// most the model's context length in tokens.
double continuation_nll(const Model& model, const std::vector<int>& tokens, std::size_t first);

} // namespace pbllm
