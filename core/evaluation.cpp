#include "core/evaluation.h"

#include "core/error.h"
#include "core/llama.h"
#include "core/system.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace pbllm {
namespace {

bool valid_utf8(const std::string& s)
{
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (n == 0 || i + n > s.size())
            return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
                return false;
        i += n;
    }
    return true;
}

} // namespace

std::string read_text_file(const std::string& path)
{
    std::string raw = read_file_bytes(path);
    if (!valid_utf8(raw))
        throw Error(path + ": not valid UTF-8 text");
    std::string text;
    text.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i)
        if (!(raw[i] == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n'))
            text += raw[i];
    return text;
}

EvalResult evaluate_perplexity(const Model& model, const std::vector<int>& tokens, const PerplexitySettings& settings,
                               const ProgressFn& progress)
{
    const ModelConfig& c = model.config;
    const int seqlen = settings.seqlen > 0 ? settings.seqlen : c.usable_context();
    if (seqlen < 2)
        throw Error("seqlen must be at least 2 (got " + std::to_string(seqlen) + ")");
    if (seqlen > c.max_seq_len)
        throw Error("seqlen " + std::to_string(seqlen) + " exceeds the model's context length of " +
                    std::to_string(c.max_seq_len));
    std::int64_t windows = static_cast<std::int64_t>(tokens.size()) / seqlen;
    if (settings.max_windows > 0)
        windows = std::min<std::int64_t>(windows, settings.max_windows);
    if (windows == 0)
        throw Error("the text has " + std::to_string(tokens.size()) + " tokens, fewer than one window of " +
                    std::to_string(seqlen));

    // Keep the largest activations of a batch (logits and attention scores) near 256 MiB.
    const std::int64_t per_window = static_cast<std::int64_t>(seqlen) * (c.vocab_size * 3 + c.n_heads * seqlen * 2 +
                                                                         c.hidden_dim * 3 + std::max(c.dim, c.q_dim()) * 8) * 4;
    const std::int64_t batch = settings.batch > 0 ? settings.batch
                                                   : std::clamp<std::int64_t>((256ll << 20) / per_window, 1, 64);
    if (model.tok_embeddings.device().is_cpu())
        require_memory(for_compute_peak_bytes(model) + batch * per_window + (256ll << 20),
                       "perplexity of " + model.source_path + " with " + std::to_string(batch) + " window(s) of " +
                           std::to_string(seqlen) + " tokens per forward pass (fewer windows per pass or shorter "
                           "windows need less)");
    const at::Device device = model.tok_embeddings.device();
    const at::Tensor all = at::tensor(std::vector<std::int64_t>(tokens.begin(), tokens.begin() + windows * seqlen))
                               .view({windows, seqlen});
    // Layer-major over groups of windows: each decoder layer is made ready for compute (converted
    // to float32 when the model keeps F16/BF16 weights mapped) once per group, not once per batch.
    // A group's residual stream is kept near 256 MiB.
    const std::int64_t stream_bytes = static_cast<std::int64_t>(seqlen) * c.dim * 4;
    const std::int64_t group = std::max<std::int64_t>(batch, (256ll << 20) / stream_bytes / batch * batch);
    const RopeTables rope = make_rope_tables(c, seqlen);
    Model head = model; // final norm and output head ready for compute, shared by every batch
    head.final_norm = for_compute(model.final_norm);
    head.output = for_compute(model.output);
    const double steps = static_cast<double>((windows + group - 1) / group) * (c.n_layers + 1);
    double step = 0;

    c10::InferenceMode inference;
    const auto start = std::chrono::steady_clock::now();
    double total_nll = 0.0;
    report_progress(progress, 0.0, "perplexity");
    for (std::int64_t g = 0; g < windows; g += group) {
        const std::int64_t gn = std::min(group, windows - g);
        const at::Tensor ids = all.narrow(0, g, gn).to(device);
        at::Tensor x = embed_tokens(model, ids);
        for (int l = 0; l < c.n_layers; ++l) {
            const DecoderLayer layer = for_compute(model.layers[l]);
            for (std::int64_t b = 0; b < gn; b += batch) {
                const std::int64_t n = std::min(batch, gn - b);
                adapt_threads_to_load();
                x.narrow(0, b, n).copy_(decoder_layer_forward(c, layer, x.narrow(0, b, n), rope));
            }
            report_progress(progress, ++step / steps,
                            "perplexity: layer " + std::to_string(l + 1) + "/" + std::to_string(c.n_layers));
        }
        for (std::int64_t b = 0; b < gn; b += batch) {
            const std::int64_t n = std::min(batch, gn - b);
            const at::Tensor logits = output_logits(head, x.narrow(0, b, n));
            const at::Tensor logp = at::log_softmax(logits.narrow(1, 0, seqlen - 1), -1);
            const at::Tensor target = ids.narrow(0, b, n).narrow(1, 1, seqlen - 1).unsqueeze(-1);
            total_nll -= logp.gather(-1, target).to(at::kDouble).sum().item<double>();
        }
        report_progress(progress, ++step / steps, "perplexity: output head");
    }
    EvalResult r;
    r.seqlen = seqlen;
    r.windows = windows;
    r.tokens = windows * (seqlen - 1);
    r.mean_nll = total_nll / static_cast<double>(r.tokens);
    r.ppl = std::exp(r.mean_nll);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.tokens_per_second = static_cast<double>(windows * seqlen) / r.seconds;
    return r;
}

} // namespace pbllm

namespace pbllm {

double continuation_nll(const Model& model, const std::vector<int>& tokens, std::size_t first)
{
    if (first < 1 || first >= tokens.size())
        throw Error("continuation_nll: the scored part must start after the first token and be non-empty");
    if (tokens.size() > static_cast<std::size_t>(model.config.max_seq_len))
        throw Error("continuation_nll: " + std::to_string(tokens.size()) + " tokens exceed the context length " +
                    std::to_string(model.config.max_seq_len));
    c10::InferenceMode inference;
    std::vector<std::int64_t> ids(tokens.begin(), tokens.end());
    const auto n = static_cast<std::int64_t>(ids.size());
    const at::Tensor input = at::tensor(ids).view({1, n});
    // Position t predicts token t + 1: score logits [first - 1, n - 1) against tokens [first, n).
    const at::Tensor logits = forward(model, input).to(at::kCPU, at::kFloat)[0];
    const std::int64_t begin = static_cast<std::int64_t>(first) - 1;
    const at::Tensor logp = at::log_softmax(logits.narrow(0, begin, n - 1 - begin), -1);
    const at::Tensor targets = input[0].narrow(0, begin + 1, n - 1 - begin).unsqueeze(1);
    return -logp.gather(1, targets).mean().item<double>();
}

} // namespace pbllm
