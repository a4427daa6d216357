#include "core/ptq.h"

#include "core/calibration.h"
#include "core/quant/registry.h"
#include "core/error.h"
#include "core/system.h"
#include "core/llama.h"
#include "core/quantizers.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

namespace pbllm {

double QuantizedModel::salient_ratio() const
{
    double salient = 0.0, total = 0.0;
    for (const QuantizedLinear& q : linears) {
        if (method_info(q.settings.method).plain_grid)
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

namespace {

/// A layer's norms and biases as the packed file stores them (FP16): the quantized model computes
/// with those values.
void round_layer_full_precision_to_fp16(DecoderLayer& layer)
{
    for (at::Tensor* t : {&layer.attn_norm, &layer.ffn_norm, &layer.q_norm, &layer.k_norm})
        if (t->defined())
            *t = round_to_fp16(t->to(at::kCPU, at::kFloat));
    for (at::Tensor& b : layer.bias)
        if (b.defined())
            b = round_to_fp16(b.to(at::kCPU, at::kFloat));
}

} // namespace

Model with_fp16_full_precision(const Model& model, bool head_quantized)
{
    Model m = model.to(at::kCPU, at::kFloat);
    m.tok_embeddings = round_to_fp16(m.tok_embeddings);
    m.final_norm = round_to_fp16(m.final_norm);
    m.output = m.config.tied_embeddings ? m.tok_embeddings : (head_quantized ? m.output : round_to_fp16(m.output));
    for (DecoderLayer& layer : m.layers)
        round_layer_full_precision_to_fp16(layer);
    return m;
}

namespace {

bool first_of_input(LinearKind kind)
{
    return kind == LinearKind::Q || kind == LinearKind::O || kind == LinearKind::Gate || kind == LinearKind::Down;
}

bool last_of_input(LinearKind kind)
{
    return kind == LinearKind::V || kind == LinearKind::O || kind == LinearKind::Up || kind == LinearKind::Down;
}

} // namespace

LayerwiseQuantizer::LayerwiseQuantizer(const Model& model, const std::vector<std::vector<int>>& windows,
                                       const QuantPlan& plan)
    : model_(model), plan_(plan)
{
    plan_.validate();
    if (windows.empty())
        throw Error("quantization needs calibration windows");
    const QuantConfig& cfg = plan_.config;
    if (cfg.quantize_head && model.config.tied_embeddings)
        throw Error("quantize_head: the output head is tied to the token embedding, which stays full precision");
    options_.blocksize = cfg.blocksize;
    options_.groupsize = cfg.groupsize;
    options_.percdamp = cfg.percdamp;
    options_.act_order = cfg.act_order;
    n_ = static_cast<std::int64_t>(windows.size());
    seqlen_ = static_cast<std::int64_t>(windows[0].size());
    std::vector<std::int64_t> flat;
    flat.reserve(static_cast<std::size_t>(n_ * seqlen_));
    for (const auto& w : windows) {
        if (static_cast<std::int64_t>(w.size()) != seqlen_)
            throw Error("calibration windows must all have the same length");
        flat.insert(flat.end(), w.begin(), w.end());
    }
    ids_ = at::tensor(flat).view({n_, seqlen_});
    rope_ = make_rope_tables(model.config, static_cast<int>(seqlen_));
}

at::Tensor LayerwiseQuantizer::embed() const
{
    c10::InferenceMode inference;
    return round_to_fp16(embed_tokens(model_, ids_).to(at::kCPU, at::kFloat));
}

void LayerwiseQuantizer::quantize_layer(int l, at::Tensor& x, const LinearSink& take, const StageFn& stage,
                                        DecoderLayer* computed) const
{
    c10::InferenceMode inference;
    const ModelConfig& c = model_.config;
    auto enter = [&](std::string_view s) {
        if (stage)
            stage(s);
    };
    const DecoderLayer& source = model_.layers[static_cast<std::size_t>(l)];
    DecoderLayer layer;
    layer.attn_norm = source.attn_norm;
    layer.ffn_norm = source.ffn_norm;
    layer.q_norm = source.q_norm;
    layer.k_norm = source.k_norm;
    layer.bias = source.bias;
    round_layer_full_precision_to_fp16(layer);
    for (int k = 0; k < kLinearKindCount; ++k)
        layer.linear[k] = source.linear[k].to(at::kCPU, at::kFloat);

    // 1. Hessians of this layer's inputs, with the (already quantized) earlier layers.
    enter("hessians");
    std::vector<HessianAccumulator> acc;
    for (int i = 0; i < kLinearInputCount; ++i)
        acc.emplace_back(input_features(static_cast<LinearInput>(i), c));
    // Each Linear's squared outputs over the windows sum to N/2 tr(W H W^T): the output error's
    // denominator, which would otherwise cost a (rows x cols x cols) product per Linear.
    std::array<double, kLinearKindCount> output_energy{};
    for_each_batch(n_, seqlen_, c, [&](std::int64_t b, std::int64_t count) {
        decoder_layer_forward(c, layer, x.narrow(0, b, count), rope_,
                              [&](LinearKind kind, const at::Tensor& input, const at::Tensor& output) {
                                  if (first_of_input(kind))
                                      acc[static_cast<int>(input_of(kind))].add(input);
                                  const double norm = output.norm().item<double>();
                                  output_energy[static_cast<std::size_t>(kind)] += norm * norm;
                              });
    });
    const double energy_scale = 2.0 / static_cast<double>(n_ * seqlen_); // as HessianAccumulator
    // 2. Quantize every Linear of the layer. Each Hessian is made once, in place of its sum, and
    // its last reader gets the last reference, so that it is freed once factored.
    std::array<at::Tensor, kLinearInputCount> hessians;
    for (int i = 0; i < kLinearInputCount; ++i)
        hessians[static_cast<std::size_t>(i)] = acc[static_cast<std::size_t>(i)].take_hessian();
    acc.clear();
    for (LinearKind kind : kAllLinearKinds) {
        enter(linear_short_name(kind));
        const std::string name = linear_name(l, kind);
        const LayerQuantSettings s = plan_.settings_for(name);
        at::Tensor& kept = hessians[static_cast<std::size_t>(input_of(kind))];
        at::Tensor H = last_of_input(kind) ? std::exchange(kept, at::Tensor()) : kept;
        if (s.skip) {
            layer.weight(kind) = round_to_fp16(layer.weight(kind));
        } else {
            QuantizedLinear q = quantize_linear(name, layer.weight(kind), std::move(H), s, options_,
                                                energy_scale * output_energy[static_cast<std::size_t>(kind)]);
            layer.weight(kind) = q.dequantized;
            take(std::move(q));
        }
    }
    // 3. The quantized layer produces the next layer's inputs.
    enter("output");
    at::Tensor next = at::empty_like(x);
    for_each_batch(n_, seqlen_, c, [&](std::int64_t b, std::int64_t count) {
        next.narrow(0, b, count).copy_(decoder_layer_forward(c, layer, x.narrow(0, b, count), rope_));
    });
    x = next;
    if (computed)
        *computed = std::move(layer);
}

QuantizedLinear LayerwiseQuantizer::quantize_head(const at::Tensor& x) const
{
    c10::InferenceMode inference;
    const ModelConfig& c = model_.config;
    HessianAccumulator acc(c.dim);
    acc.add(rms_norm(x, round_to_fp16(model_.final_norm.to(at::kCPU, at::kFloat)), c.norm_eps));
    return quantize_linear("lm_head", model_.output.to(at::kCPU, at::kFloat), acc.hessian(),
                           plan_.settings_for("lm_head"), options_);
}

std::int64_t LayerwiseQuantizer::working_bytes() const
{
    const ModelConfig& c = model_.config;
    const DecoderLayer& shapes = model_.layers.front();
    const bool head = plan_.config.quantize_head;
    // Everything is float32 unless said otherwise. Held throughout: the residual stream entering
    // the layer, the layer's weights, and the runtime's own memory.
    const std::int64_t stream = n_ * seqlen_ * c.dim * 4;
    const std::int64_t runtime = kRuntimeReserveBytes;
    std::int64_t layer_bytes = 0, kept_bytes = 0;
    std::array<std::int64_t, kLinearInputCount> hessian{}; // float64 (cols x cols) per input
    std::array<std::int64_t, kLinearKindCount> kept_after{}; // packed Linears kept once k is done
    for (LinearKind kind : kAllLinearKinds) {
        const at::Tensor& w = shapes.weight(kind);
        const std::int64_t rows = w.size(0), cols = w.size(1);
        layer_bytes += rows * cols * 4;
        hessian[static_cast<std::size_t>(input_of(kind))] = cols * cols * 8;
        // Packed: the worst bound the settings of any layer's rules give this Linear.
        double bits = 0.0;
        for (int l = 0; l < c.n_layers; ++l) {
            const LayerQuantSettings s = plan_.settings_for(linear_name(l, kind));
            bits = std::max(bits, stored_bits_bound(s, rows, cols, plan_.config.blocksize, plan_.config.groupsize));
        }
        kept_bytes += static_cast<std::int64_t>(std::ceil(bits / 8.0 * static_cast<double>(rows * cols)));
        kept_after[static_cast<std::size_t>(kind)] = kept_bytes;
    }
    const std::int64_t held = stream + layer_bytes + runtime;

    // 1. Accumulating: the four Hessian sums (float64), each with a block-row product buffer,
    // and one batch of the forward's activations.
    std::int64_t accumulating = held + batch_activation_bytes(n_, seqlen_, c);
    for (LinearKind kind : kAllLinearKinds)
        if (first_of_input(kind)) {
            const std::int64_t cols = shapes.weight(kind).size(1);
            accumulating += hessian[static_cast<std::size_t>(input_of(kind))] + std::min<std::int64_t>(1024, cols) * cols * 4;
        }

    // 2. Quantizing Linear k: the Hessians not yet released (each goes once its last reader has
    // factored it), the packed Linears before k, and quantize_linear's own work:
    //  - factoring: H, its weights' working copy and three float32 (cols x cols) matrices
    //    (factor_hessian keeps two; LAPACK's copies and cholesky_inverse's filling of the other
    //    triangle add temporaries: 2.65 of them measured at the peak of a 7B down_proj), with
    //    act-order two float64 permuted copies of H more;
    //  - then: the upper factor, and per weight the working copy, the saliency scores, masks
    //    and the binarization's temporaries (fit_binary_stats), then the result (dequantized,
    //    codes, signs, salient): at most 22 bytes a weight at once.
    auto linear_work = [&](std::int64_t rows, std::int64_t cols, bool hessian_kept) {
        const std::int64_t square = cols * cols * 4, own_hessian = cols * cols * 8, weights = rows * cols;
        const std::int64_t factoring =
            own_hessian + 3 * square + weights * 4 + (plan_.config.act_order ? 2 * own_hessian : 0);
        const std::int64_t sweeping = (hessian_kept ? own_hessian : 0) + square + weights * 22;
        return std::max(factoring, sweeping);
    };
    std::int64_t peak = accumulating;
    std::int64_t kept = 0;
    for (LinearKind kind : kAllLinearKinds) {
        const int own = static_cast<int>(input_of(kind));
        std::int64_t later_inputs = 0; // inputs come in kind order: the earlier ones are released
        for (int i = own + 1; i < kLinearInputCount; ++i)
            later_inputs += hessian[static_cast<std::size_t>(i)];
        const at::Tensor& w = shapes.weight(kind);
        peak = std::max(peak, held + kept + later_inputs + linear_work(w.size(0), w.size(1), !last_of_input(kind)));
        kept = kept_after[static_cast<std::size_t>(kind)];
    }
    // 3. The quantized layer's forward: the next residual stream and one batch of activations.
    peak = std::max(peak, held + kept + stream + batch_activation_bytes(n_, seqlen_, c));
    // The head, when quantized, comes after the last layer with only the stream held: its
    // weights, the accumulated sum and the Hessian (float64), kept for the output error's
    // products (20 bytes a weight, less than the sweep's).
    if (head) {
        const std::int64_t rows = c.vocab_size, cols = c.dim;
        peak = std::max(peak, stream * 2 + runtime + rows * cols * 4 + 2 * cols * cols * 8 + linear_work(rows, cols, false));
    }
    return peak;
}

double LayerwiseQuantizer::layer_flops() const
{
    const ModelConfig& c = model_.config;
    const double d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), q = c.q_dim();
    const double tokens = static_cast<double>(n_ * seqlen_);
    const double weights = 2 * d * q + 2 * d * kv + 3 * d * h;
    const double attention = 4.0 * static_cast<double>(seqlen_) * q; // scores and weighted sum, per token
    const double forward = tokens * (2.0 * weights + attention);
    const double hessians = tokens * (2 * HessianAccumulator::flops_per_token(c.dim) +
                                      HessianAccumulator::flops_per_token(c.q_dim()) +
                                      HessianAccumulator::flops_per_token(c.hidden_dim));
    // GPTQ sweeps rows x cols^2 multiply-adds per Linear (the output error comes free from its
    // losses and the forward's outputs); each Linear factors its Hessian (~4/3 cols^3).
    const double gptq = 2.0 * (q * d * d + 2 * kv * d * d + d * q * q + 2 * h * d * d + d * h * h);
    const double factor = 4.0 / 3.0 * (5 * d * d * d + q * q * q + h * h * h);
    return 2.0 * forward + hessians + gptq + factor;
}

QuantizedModel quantize_model(const Model& model, const std::vector<std::vector<int>>& windows, const QuantPlan& plan,
                              const ProgressFn& progress)
{
    const LayerwiseQuantizer quantizer(model, windows, plan);
    const auto start = std::chrono::steady_clock::now();
    const ModelConfig& c = model.config;
    const QuantConfig& cfg = plan.config;

    // What this pass holds besides the model: every quantized Linear whole (float32 dequantized
    // weights, which the result computes with, int16 codes, sign and salient masks: 8 bytes a
    // weight) and the quantizer's working memory.
    std::int64_t linear_weights = 0;
    for (const DecoderLayer& layer : model.layers)
        for (const at::Tensor& w : layer.linear)
            linear_weights += w.numel();
    require_memory(linear_weights * 8 + quantizer.working_bytes(),
                   "quantizing " + model.source_path + " (its " + std::to_string(linear_weights) +
                       " quantized weights kept whole, 8 bytes each, one layer's Hessians, " + std::to_string(windows.size()) +
                       " calibration windows; fewer or shorter windows need less, and pbllm quantize keeps one "
                       "layer at a time)");

    QuantizedModel out;
    out.plan = plan;
    out.model = with_fp16_full_precision(model, cfg.quantize_head);
    at::Tensor x = quantizer.embed();
    const int total_steps = c.n_layers * kLinearKindCount + 1;
    int step = 0;
    report_progress(progress, 0.0, "quantizing");
    for (int l = 0; l < c.n_layers; ++l) {
        quantizer.quantize_layer(
            l, x, [&](QuantizedLinear&& q) { out.linears.push_back(std::move(q)); },
            [&](std::string_view stage) {
                if (stage != "hessians" && stage != "output")
                    report_progress(progress, static_cast<double>(step++) / total_steps,
                                    "quantizing layer " + std::to_string(l + 1) + "/" + std::to_string(c.n_layers) +
                                        ", " + std::string(stage));
            },
            &out.model.layers[static_cast<std::size_t>(l)]);
    }
    if (cfg.quantize_head) {
        QuantizedLinear q = quantizer.quantize_head(x);
        out.model.output = q.dequantized;
        out.linears.push_back(std::move(q));
    }
    report_progress(progress, 1.0, "quantized");
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
}

} // namespace pbllm
