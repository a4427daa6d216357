#include "core/synthetic.h"

#include "core/system.h"

#include <ATen/ATen.h>

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

Model make_synthetic_model(const ModelConfig& config, std::uint64_t seed)
{
    config.validate("synthetic model");
    require_memory(config.parameter_count() * 4, "synthetic model");
    at::Generator gen = at::detail::createCPUGenerator(seed);
    auto randn = [&](std::int64_t rows, std::int64_t cols) {
        return at::normal(0.0, 0.02, {rows, cols}, gen);
    };
    const std::int64_t d = config.dim, h = config.hidden_dim, kv = config.kv_dim(), v = config.vocab_size;
    Model m;
    m.config = config;
    m.source_path = "synthetic";
    m.file_dtype = "f32";
    m.tok_embeddings = randn(v, d);
    for (int i = 0; i < config.n_layers; ++i) {
        DecoderLayer l;
        l.attn_norm = at::ones({d});
        l.ffn_norm = at::ones({d});
        l.weight(LinearKind::Q) = randn(d, d);
        l.weight(LinearKind::K) = randn(kv, d);
        l.weight(LinearKind::V) = randn(kv, d);
        l.weight(LinearKind::O) = randn(d, d);
        l.weight(LinearKind::Gate) = randn(h, d);
        l.weight(LinearKind::Up) = randn(h, d);
        l.weight(LinearKind::Down) = randn(d, h);
        m.layers.push_back(l);
    }
    m.final_norm = at::ones({d});
    m.output = config.tied_embeddings ? m.tok_embeddings : randn(v, d);
    return m;
}

} // namespace pbllm
