#include "core/synthetic.h"

#include "core/error.h"
#include "core/hf_model.h"
#include "core/safetensors.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <optional>

namespace pbllm {

ModelConfig stories15m_shape()
{
    ModelConfig c;
    c.dim = 288; c.hidden_dim = 768; c.n_layers = 6; c.n_heads = 6; c.n_kv_heads = 6;
    c.vocab_size = 32000; c.max_seq_len = 256;
    return c;
}

ModelConfig stories110m_shape()
{
    ModelConfig c;
    c.dim = 768; c.hidden_dim = 2048; c.n_layers = 12; c.n_heads = 12; c.n_kv_heads = 12;
    c.vocab_size = 32000; c.max_seq_len = 1024;
    return c;
}

ModelConfig tinyllama_1b_shape()
{
    ModelConfig c;
    c.dim = 2048; c.hidden_dim = 5632; c.n_layers = 22; c.n_heads = 32; c.n_kv_heads = 4;
    c.vocab_size = 32000; c.max_seq_len = 2048; c.norm_eps = 1e-5f;
    return c;
}

ModelConfig llama_7b_shape()
{
    ModelConfig c;
    c.dim = 4096; c.hidden_dim = 11008; c.n_layers = 32; c.n_heads = 32; c.n_kv_heads = 32;
    c.vocab_size = 32000; c.max_seq_len = 2048; c.norm_eps = 1e-6f;
    return c;
}

namespace {

/// Llama 3.1/3.2: vocabulary 128256, rope_theta 500000, "llama3" RoPE scaling from 8192 positions.
ModelConfig llama3_shape(int dim, int hidden, int layers, int kv_heads, float factor, bool tied)
{
    ModelConfig c;
    c.dim = dim; c.hidden_dim = hidden; c.n_layers = layers; c.n_heads = 32; c.n_kv_heads = kv_heads;
    c.vocab_size = 128256; c.max_seq_len = 131072; c.norm_eps = 1e-5f; c.rope_theta = 500000.0f;
    c.tied_embeddings = tied;
    c.rope_scaling = {RopeScaling::Type::Llama3, factor, 1.0f, 4.0f, 8192};
    return c;
}

ModelConfig mistral_7b_shape() // v0.1: a 4096-position sliding window over a 32768 context
{
    ModelConfig c;
    c.arch = "mistral";
    c.dim = 4096; c.hidden_dim = 14336; c.n_layers = 32; c.n_heads = 32; c.n_kv_heads = 8;
    c.vocab_size = 32000; c.max_seq_len = 32768; c.norm_eps = 1e-5f; c.sliding_window = 4096;
    return c;
}

ModelConfig qwen25_05b_shape() // Qwen2.5-0.5B: q/k/v biases, rope_theta 1e6, tied, GQA 14/2
{
    ModelConfig c;
    c.arch = "qwen2";
    c.dim = 896; c.hidden_dim = 4864; c.n_layers = 24; c.n_heads = 14; c.n_kv_heads = 2;
    c.vocab_size = 151936; c.max_seq_len = 32768; c.norm_eps = 1e-6f; c.rope_theta = 1000000.0f;
    c.tied_embeddings = true;
    return c;
}

ModelConfig qwen3_shape(int dim, int hidden, int layers, int heads, bool tied) // per-head q/k norms, head_dim 128
{
    ModelConfig c;
    c.arch = "qwen3";
    c.dim = dim; c.hidden_dim = hidden; c.n_layers = layers; c.n_heads = heads; c.n_kv_heads = 8;
    c.set_head_dim(128); // Qwen3-0.6B: 16 heads of 128 over a 1024-wide stream; Qwen3-8B: 32 x 128 = 4096
    c.vocab_size = 151936; c.max_seq_len = 40960; c.norm_eps = 1e-6f; c.rope_theta = 1000000.0f;
    c.tied_embeddings = tied;
    return c;
}

ModelConfig smollm_135m_shape()
{
    ModelConfig c;
    c.dim = 576; c.hidden_dim = 1536; c.n_layers = 30; c.n_heads = 9; c.n_kv_heads = 3;
    c.vocab_size = 49152; c.max_seq_len = 2048; c.norm_eps = 1e-5f; c.tied_embeddings = true;
    return c;
}

} // namespace

const std::vector<NamedShape>& synthetic_shapes()
{
    static const std::vector<NamedShape> shapes = {{"stories15m", stories15m_shape()},
                                                   {"stories110m", stories110m_shape()},
                                                   {"smollm-135m", smollm_135m_shape()},
                                                   {"qwen2.5-0.5b", qwen25_05b_shape()},
                                                   {"qwen3-0.6b", qwen3_shape(1024, 3072, 28, 16, true)},
                                                   {"tinyllama-1.1b", tinyllama_1b_shape()},
                                                   {"llama-3.2-1b", llama3_shape(2048, 8192, 16, 8, 32.0f, true)},
                                                   {"llama-7b", llama_7b_shape()},
                                                   {"mistral-7b", mistral_7b_shape()},
                                                   {"llama-3.1-8b", llama3_shape(4096, 14336, 32, 8, 8.0f, false)},
                                                   {"qwen3-8b", qwen3_shape(4096, 12288, 36, 32, false)}};
    return shapes;
}

ModelConfig synthetic_shape(const std::string& name)
{
    std::string known;
    for (const NamedShape& s : synthetic_shapes()) {
        if (s.name == name)
            return s.config;
        known += (known.empty() ? "" : ", ") + s.name;
    }
    throw Error("unknown model shape '" + name + "' (known: " + known + ")");
}

void write_synthetic_hf(const SyntheticHfSpec& spec, const std::string& dir, const ProgressFn& progress)
{
    const ModelConfig& c = spec.config;
    c.validate("synthetic model");
    if (spec.dtype != at::kHalf && spec.dtype != at::kBFloat16 && spec.dtype != at::kFloat)
        throw Error("synthetic model: dtype must be F16, BF16 or F32");
    const std::string label = "random N(0, 0.02^2) weights in the shape of " +
                              (spec.shape_name.empty() ? std::string("a Llama model") : spec.shape_name) + " (" +
                              std::to_string(c.n_layers) + " layers, seed " + std::to_string(spec.seed) +
                              "): for speed and memory benchmarks only, says nothing about quality";

    // The tensors in Model::named_tensors() order, as a loader reads them back.
    std::vector<TensorSpec> tensors;
    for (const std::string& name : tensor_names(c))
        tensors.push_back({name, spec.dtype, expected_shape(c, name)});

    const std::string header = safetensors_header(tensors, {{"format", "pt"}, {kSyntheticConfigKey, label}});
    std::int64_t total = static_cast<std::int64_t>(header.size());
    for (const TensorSpec& t : tensors) {
        std::int64_t n = 1;
        for (std::int64_t s : t.shape)
            n *= s;
        total += n * static_cast<std::int64_t>(c10::elementSize(spec.dtype));
    }
    const std::string base = prepare_hf_folder(dir, false);
    require_disk_space(base, total, base + ": the synthetic model");

    at::Generator gen = at::detail::createCPUGenerator(spec.seed);
    AtomicFileWriter out(base + "/model.safetensors");
    out.write(header.data(), header.size());
    std::int64_t written = 0;
    for (const TensorSpec& t : tensors) {
        const std::int64_t rows = t.shape[0], cols = t.shape.size() > 1 ? t.shape[1] : 1;
        if (t.shape.size() == 1) { // norm weights (ones) and biases
            const bool bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
            const at::Tensor values = (bias ? at::normal(0.0, 0.02, {rows}, gen) : at::ones({rows}, at::kFloat)).to(spec.dtype);
            out.write(values.data_ptr(), static_cast<std::size_t>(values.numel() * values.element_size()));
            continue;
        }
        // About 16M weights at a time keeps the float32 staging buffer near 64 MiB.
        const std::int64_t chunk = std::max<std::int64_t>(1, (16ll << 20) / cols);
        for (std::int64_t r = 0; r < rows; r += chunk) {
            const std::int64_t n = std::min(chunk, rows - r);
            const at::Tensor block = at::normal(0.0, 0.02, {n, cols}, gen).to(spec.dtype).contiguous();
            out.write(block.data_ptr(), static_cast<std::size_t>(block.numel() * block.element_size()));
            written += block.numel() * block.element_size();
            report_progress(progress, static_cast<double>(written) / static_cast<double>(total), "writing weights");
        }
    }
    out.commit();
    std::optional<Tokenizer> tokenizer;
    if (!spec.tokenizer_path.empty())
        tokenizer = Tokenizer::from_file(spec.tokenizer_path);
    write_file_atomically(base + "/config.json", hf_config_json(c, spec.dtype, label, tokenizer ? &*tokenizer : nullptr));
    if (!spec.tokenizer_path.empty())
        copy_tokenizer_files(spec.tokenizer_path, base);
    report_progress(progress, 1.0, "writing weights");
}

Model make_synthetic_model(const ModelConfig& config, std::uint64_t seed)
{
    config.validate("synthetic model");
    require_memory(config.parameter_count() * 4, "synthetic model");
    at::Generator gen = at::detail::createCPUGenerator(seed);
    auto randn = [&](std::int64_t rows, std::int64_t cols) {
        return at::normal(0.0, 0.02, {rows, cols}, gen);
    };
    const std::int64_t d = config.dim, h = config.hidden_dim, kv = config.kv_dim(), v = config.vocab_size,
                       q = config.q_dim();
    Model m;
    m.config = config;
    m.source_path = "synthetic";
    m.synthetic = "random N(0, 0.02^2) weights made in memory: for speed and memory benchmarks only";
    m.file_dtype = "f32";
    m.tok_embeddings = randn(v, d);
    for (int i = 0; i < config.n_layers; ++i) {
        DecoderLayer l;
        l.attn_norm = at::ones({d});
        l.ffn_norm = at::ones({d});
        l.weight(LinearKind::Q) = randn(q, d);
        l.weight(LinearKind::K) = randn(kv, d);
        l.weight(LinearKind::V) = randn(kv, d);
        l.weight(LinearKind::O) = randn(d, q);
        l.weight(LinearKind::Gate) = randn(h, d);
        l.weight(LinearKind::Up) = randn(h, d);
        l.weight(LinearKind::Down) = randn(d, h);
        if (config.qkv_bias())
            for (LinearKind k : {LinearKind::Q, LinearKind::K, LinearKind::V})
                l.bias[static_cast<int>(k)] = at::normal(0.0, 0.02, {l.weight(k).size(0)}, gen);
        if (config.qk_norm()) {
            l.q_norm = at::ones({config.head_dim()});
            l.k_norm = at::ones({config.head_dim()});
        }
        m.layers.push_back(l);
    }
    m.final_norm = at::ones({d});
    m.output = config.tied_embeddings ? m.tok_embeddings : randn(v, d);
    return m;
}

} // namespace pbllm
