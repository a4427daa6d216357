#include "core/ptq.h"

#include "core/calibration.h"
#include "core/error.h"
#include "core/system.h"
#include "core/llama.h"
#include "core/quantizers.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>

namespace pbllm {

double QuantizedModel::salient_ratio() const
{
    double salient = 0.0, total = 0.0;
    for (const QuantizedLinear& q : linears) {
        if (q.settings.method == QuantMethod::Gptq)
            continue;
        salient += q.salient_ratio * static_cast<double>(q.rows * q.cols);
        total += static_cast<double>(q.rows * q.cols);
    }
    return total > 0 ? salient / total : 0.0;
}

std::int64_t QuantizedModel::quantized_weights() const
{
    std::int64_t n = 0;
    for (const QuantizedLinear& q : linears)
        n += q.rows * q.cols;
    return n;
}

Model with_fp16_full_precision(const Model& model, bool head_quantized)
{
    Model m = model.to(at::kCPU, at::kFloat);
    m.tok_embeddings = round_to_fp16(m.tok_embeddings);
    m.final_norm = round_to_fp16(m.final_norm);
    m.output = m.config.tied_embeddings ? m.tok_embeddings : (head_quantized ? m.output : round_to_fp16(m.output));
    for (DecoderLayer& layer : m.layers) {
        layer.attn_norm = round_to_fp16(layer.attn_norm);
        layer.ffn_norm = round_to_fp16(layer.ffn_norm);
    }
    return m;
}

QuantizedModel quantize_model(const Model& model, const std::vector<std::vector<int>>& windows, const QuantPlan& plan,
                              const ProgressFn& progress)
{
    plan.validate();
    if (windows.empty())
        throw Error("quantization needs calibration windows");
    c10::InferenceMode inference;
    const auto start = std::chrono::steady_clock::now();
    const ModelConfig& c = model.config;
    const QuantConfig& cfg = plan.config;
    GptqOptions options;
    options.blocksize = cfg.blocksize;
    options.groupsize = cfg.groupsize;
    options.percdamp = cfg.percdamp;
    options.act_order = cfg.act_order;

    // What this pass holds besides the model: float32 dequantized copies of the quantized weights
    // (the result computes with them), one layer's Hessians, the calibration residual streams.
    std::int64_t linear_weights = 0;
    for (const DecoderLayer& layer : model.layers)
        for (const at::Tensor& w : layer.linear)
            linear_weights += w.numel();
    require_memory(linear_weights * 4 + layer_hessian_bytes(c) +
                       residual_stream_bytes(c, static_cast<std::int64_t>(windows.size()),
                                             static_cast<std::int64_t>(windows[0].size())),
                   "quantizing " + model.source_path + " (float32 copies of its " + std::to_string(linear_weights) +
                       " quantized weights, one layer's Hessians, " + std::to_string(windows.size()) +
                       " calibration windows; fewer or shorter windows need less)");

    QuantizedModel out;
    out.plan = plan;
    // Linear weights are replaced by new tensors below, so `model` is untouched.
    out.model = with_fp16_full_precision(model, cfg.quantize_head);

    const std::int64_t n = static_cast<std::int64_t>(windows.size());
    const std::int64_t seqlen = static_cast<std::int64_t>(windows[0].size());
    std::vector<std::int64_t> flat;
    for (const auto& w : windows)
        flat.insert(flat.end(), w.begin(), w.end());
    const at::Tensor ids = at::tensor(flat).view({n, seqlen});
    const RopeTables rope = make_rope_tables(c, static_cast<int>(seqlen));
    at::Tensor x = embed_tokens(out.model, ids);

    const int total_steps = c.n_layers * kLinearKindCount + 1;
    int step = 0;
    report_progress(progress, 0.0, "quantizing");
    for (int l = 0; l < c.n_layers; ++l) {
        DecoderLayer& layer = out.model.layers[l];
        for (at::Tensor& w : layer.linear)
            w = w.to(at::kCPU, at::kFloat);
        // 1. Hessians of this layer's inputs, with the (already quantized) earlier layers.
        std::vector<HessianAccumulator> acc;
        for (int features : {c.dim, c.dim, c.dim, c.hidden_dim})
            acc.emplace_back(features);
        for_each_batch(n, seqlen, c, [&](std::int64_t b, std::int64_t count) {
            decoder_layer_forward(c, layer, x.narrow(0, b, count), rope, [&](LinearKind kind, const at::Tensor& input) {
                if (kind == LinearKind::Q || kind == LinearKind::O || kind == LinearKind::Gate || kind == LinearKind::Down)
                    acc[static_cast<int>(input_of(kind))].add(input);
            });
        });
        // 2. Quantize every Linear of the layer.
        for (LinearKind kind : kAllLinearKinds) {
            const std::string name = linear_name(l, kind);
            const LayerQuantSettings s = plan.settings_for(name);
            if (s.skip) {
                layer.weight(kind) = round_to_fp16(layer.weight(kind));
            } else {
                QuantizedLinear q =
                    quantize_linear(name, layer.weight(kind), acc[static_cast<int>(input_of(kind))].hessian(), s, options);
                layer.weight(kind) = q.dequantized;
                out.linears.push_back(std::move(q));
            }
            report_progress(progress, static_cast<double>(++step) / total_steps, "quantizing " + name);
        }
        // 3. The quantized layer produces the next layer's inputs.
        at::Tensor next = at::empty_like(x);
        for_each_batch(n, seqlen, c, [&](std::int64_t b, std::int64_t count) {
            next.narrow(0, b, count).copy_(decoder_layer_forward(c, layer, x.narrow(0, b, count), rope));
        });
        x = next;
    }
    if (cfg.quantize_head) {
        if (c.tied_embeddings)
            throw Error("quantize_head: the output head is tied to the token embedding, which stays full precision");
        HessianAccumulator acc(c.dim);
        acc.add(rms_norm(x, out.model.final_norm, c.norm_eps));
        const LayerQuantSettings s = plan.settings_for("lm_head");
        QuantizedLinear q = quantize_linear("lm_head", out.model.output, acc.hessian(), s, options);
        out.model.output = q.dequantized;
        out.linears.push_back(std::move(q));
    }
    report_progress(progress, 1.0, "quantized");
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
}

} // namespace pbllm
