#include "core/model.h"

#include "core/kernels/packed_matvec.h"

#include "core/architecture.h"
#include "core/error.h"
#include "core/tensor_stats.h"

#include <ATen/ATen.h>
#include <QJsonDocument>
#include <QJsonObject>

#include <cmath>

namespace pbllm {

bool ModelConfig::qkv_bias() const { return architecture(arch, "model").qkv_bias; }
bool ModelConfig::qk_norm() const { return architecture(arch, "model").qk_norm; }

void ModelConfig::set_head_dim(int value)
{
    const bool is_default = n_heads > 0 && dim % n_heads == 0 && value == dim / n_heads;
    explicit_head_dim = is_default ? 0 : value;
}

std::int64_t ModelConfig::parameter_count() const
{
    const std::int64_t d = dim, h = hidden_dim, kv = kv_dim(), v = vocab_size, q = q_dim();
    const std::int64_t per_layer = 2 * d + d * q * 2 + d * kv * 2 + 3 * d * h + (qkv_bias() ? q + 2 * kv : 0) +
                                   (qk_norm() ? 2 * head_dim() : 0);
    return v * d * (tied_embeddings ? 1 : 2) + n_layers * per_layer + d;
}

void ModelConfig::validate(const std::string& origin) const
{
    auto fail = [&](const std::string& why) { throw Error(origin + ": invalid model configuration: " + why); };
    auto positive = [&](int value, const char* name) {
        if (value <= 0)
            fail(std::string(name) + " = " + std::to_string(value) + " (must be positive)");
    };
    positive(dim, "dim");
    positive(hidden_dim, "hidden_dim");
    positive(n_layers, "n_layers");
    positive(n_heads, "n_heads");
    positive(n_kv_heads, "n_kv_heads");
    positive(vocab_size, "vocab_size");
    positive(max_seq_len, "max_seq_len");
    // Generous upper bounds catch garbage headers before they turn into huge allocations.
    if (dim > 65536 || hidden_dim > 262144 || n_layers > 1024 || vocab_size > 1 << 22 || max_seq_len > 1 << 22)
        fail("implausibly large value (dim " + std::to_string(dim) + ", hidden_dim " + std::to_string(hidden_dim) +
             ", layers " + std::to_string(n_layers) + ", vocab " + std::to_string(vocab_size) + ", seq_len " +
             std::to_string(max_seq_len) + ")");
    if (n_heads > 1024)
        fail("n_heads " + std::to_string(n_heads) + " is implausibly large");
    if (explicit_head_dim < 0 || explicit_head_dim > 1024)
        fail("head_dim " + std::to_string(explicit_head_dim) + " is outside [1, 1024]");
    if (explicit_head_dim == 0 && dim % n_heads != 0)
        fail("dim " + std::to_string(dim) + " is not divisible by n_heads " + std::to_string(n_heads) +
             " (and no head_dim is given)");
    if (n_heads % n_kv_heads != 0)
        fail("n_heads " + std::to_string(n_heads) + " is not a multiple of n_kv_heads " + std::to_string(n_kv_heads));
    if (head_dim() % 2 != 0)
        fail("head dimension " + std::to_string(head_dim()) + " is odd; RoPE needs pairs");
    if (!(norm_eps > 0.0f) || !(rope_theta > 0.0f))
        fail("norm_eps and rope_theta must be positive");
    const Architecture& a = architecture(arch, origin);
    const RopeScaling& r = rope_scaling;
    if (r.type != RopeScaling::Type::None && !(r.factor >= 1.0f && r.factor <= 1024.0f))
        fail("rope_scaling factor " + std::to_string(r.factor) + " is outside [1, 1024]");
    if (r.type == RopeScaling::Type::Llama3 &&
        !(r.low_freq_factor > 0.0f && r.high_freq_factor > r.low_freq_factor && r.original_max_position > 0))
        fail("llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0");
    if (sliding_window < 0 || (sliding_window > 0 && !a.sliding_window))
        fail("sliding_window " + std::to_string(sliding_window) + " is not possible for model type " + arch);
}

namespace {

std::string_view rope_scaling_name(RopeScaling::Type type)
{
    switch (type) {
    case RopeScaling::Type::Linear: return "linear";
    case RopeScaling::Type::Llama3: return "llama3";
    case RopeScaling::Type::None: break;
    }
    return "none";
}

} // namespace

RopeScaling RopeScaling::from_json(const QJsonValue& value, const std::string& origin)
{
    RopeScaling r;
    if (value.isNull() || value.isUndefined())
        return r;
    const QJsonObject o = value.toObject();
    // transformers writes "rope_type"; configs from before 4.43 wrote "type".
    const QString type = o.contains("rope_type") ? o.value("rope_type").toString() : o.value("type").toString();
    auto number = [&](const char* key, double fallback) {
        const QJsonValue v = o.value(key);
        if (v.isUndefined())
            return fallback;
        if (!v.isDouble() || !(std::abs(v.toDouble()) <= 1e9))
            throw Error(origin + ": rope_scaling." + key + " is not a number of sensible size");
        return v.toDouble();
    };
    if (type == "default" || type == "none")
        return r;
    if (type == "linear") {
        r.type = Type::Linear;
    } else if (type == "llama3") {
        r.type = Type::Llama3;
        r.low_freq_factor = static_cast<float>(number("low_freq_factor", 1.0));
        r.high_freq_factor = static_cast<float>(number("high_freq_factor", 4.0));
        const double original = number("original_max_position_embeddings", 0.0);
        if (!(original >= 0.0 && original <= (1 << 24)))
            throw Error(origin + ": rope_scaling.original_max_position_embeddings is out of range");
        r.original_max_position = static_cast<int>(original);
    } else {
        throw Error(origin + ": rope_scaling type '" + type.toStdString() +
                    "' is not supported (linear and llama3 are)");
    }
    if (!o.contains("factor"))
        throw Error(origin + ": rope_scaling.factor is missing");
    r.factor = static_cast<float>(number("factor", 1.0));
    return r;
}

QJsonValue RopeScaling::to_json() const
{
    if (type == Type::None)
        return QJsonValue::Null;
    QJsonObject o{{"rope_type", QString::fromLatin1(rope_scaling_name(type).data())},
                  {"factor", static_cast<double>(factor)}};
    if (type == Type::Llama3) {
        o.insert("low_freq_factor", static_cast<double>(low_freq_factor));
        o.insert("high_freq_factor", static_cast<double>(high_freq_factor));
        o.insert("original_max_position_embeddings", original_max_position);
    }
    return o;
}

std::string ModelConfig::to_json() const
{
    return QJsonDocument(QJsonObject{{"dim", dim},
                                     {"hidden_dim", hidden_dim},
                                     {"n_layers", n_layers},
                                     {"n_heads", n_heads},
                                     {"n_kv_heads", n_kv_heads},
                                     {"head_dim", head_dim()},
                                     {"vocab_size", vocab_size},
                                     {"max_seq_len", max_seq_len},
                                     {"norm_eps", static_cast<double>(norm_eps)},
                                     {"rope_theta", static_cast<double>(rope_theta)},
                                     {"tied_embeddings", tied_embeddings},
                                     {"arch", QString::fromStdString(arch)},
                                     {"rope_scaling", rope_scaling.to_json()},
                                     {"sliding_window", sliding_window}})
        .toJson(QJsonDocument::Compact)
        .toStdString();
}

ModelConfig ModelConfig::from_json(const std::string& json, const std::string& origin)
{
    const QJsonObject o = QJsonDocument::fromJson(QByteArray::fromStdString(json)).object();
    if (o.isEmpty())
        throw Error(origin + ": model configuration is not a JSON object");
    ModelConfig c;
    c.dim = o["dim"].toInt();
    c.hidden_dim = o["hidden_dim"].toInt();
    c.n_layers = o["n_layers"].toInt();
    c.n_heads = o["n_heads"].toInt();
    c.n_kv_heads = o["n_kv_heads"].toInt();
    c.vocab_size = o["vocab_size"].toInt();
    c.max_seq_len = o["max_seq_len"].toInt();
    c.norm_eps = static_cast<float>(o["norm_eps"].toDouble());
    c.rope_theta = static_cast<float>(o["rope_theta"].toDouble());
    c.tied_embeddings = o["tied_embeddings"].toBool();
    // Absent from files written before families existed: Llama without scaling.
    c.arch = o["arch"].toString("llama").toStdString();
    c.rope_scaling = RopeScaling::from_json(o["rope_scaling"], origin);
    c.sliding_window = o["sliding_window"].toInt(0);
    c.set_head_dim(o["head_dim"].toInt(0));
    c.validate(origin);
    return c;
}

std::string_view to_string(ModelFormat format)
{
    switch (format) {
    case ModelFormat::Llama2cV0: return "llama2.c (version 0)";
    case ModelFormat::Llama2cV1: return "llama2.c (version 1)";
    case ModelFormat::HuggingFace: return "Hugging Face safetensors";
    case ModelFormat::PbllmPacked: return "PB-LLM packed (.pbllm.h5)";
    }
    return "unknown";
}

std::string_view linear_short_name(LinearKind kind)
{
    switch (kind) {
    case LinearKind::Q: return "q_proj";
    case LinearKind::K: return "k_proj";
    case LinearKind::V: return "v_proj";
    case LinearKind::O: return "o_proj";
    case LinearKind::Gate: return "gate_proj";
    case LinearKind::Up: return "up_proj";
    case LinearKind::Down: return "down_proj";
    }
    return "?";
}

std::string linear_name(int layer, LinearKind kind)
{
    const bool attention = kind == LinearKind::Q || kind == LinearKind::K || kind == LinearKind::V ||
                           kind == LinearKind::O;
    return "model.layers." + std::to_string(layer) + (attention ? ".self_attn." : ".mlp.") +
           std::string(linear_short_name(kind));
}

std::vector<NamedTensor> Model::named_tensors() const
{
    std::vector<NamedTensor> out;
    out.push_back({"model.embed_tokens.weight", tok_embeddings});
    for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        out.push_back({prefix + "input_layernorm.weight", layers[i].attn_norm});
        for (LinearKind k : kAllLinearKinds) {
            if (!layers[i].packed_weight(k))
                out.push_back({linear_name(i, k) + ".weight", layers[i].weight(k)});
            if (config.qkv_bias() && (k == LinearKind::Q || k == LinearKind::K || k == LinearKind::V))
                out.push_back({linear_name(i, k) + ".bias", layers[i].bias_of(k)});
        }
        if (config.qk_norm()) {
            out.push_back({prefix + "self_attn.q_norm.weight", layers[i].q_norm});
            out.push_back({prefix + "self_attn.k_norm.weight", layers[i].k_norm});
        }
        out.push_back({prefix + "post_attention_layernorm.weight", layers[i].ffn_norm});
    }
    out.push_back({"model.norm.weight", final_norm});
    if (!config.tied_embeddings)
        out.push_back({"lm_head.weight", output});
    return out;
}

std::vector<std::string> tensor_names(const ModelConfig& config)
{
    Model skeleton; // undefined tensors: only the names and their order are wanted
    skeleton.config = config;
    skeleton.layers.resize(static_cast<std::size_t>(config.n_layers));
    std::vector<std::string> names;
    for (const NamedTensor& t : skeleton.named_tensors())
        names.push_back(t.name);
    return names;
}

std::vector<std::int64_t> expected_shape(const ModelConfig& c, const std::string& name)
{
    const std::int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size, q = c.q_dim();
    auto ends_with = [&](std::string_view suffix) {
        return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("embed_tokens.weight") || ends_with("lm_head.weight")) return {v, d};
    if (ends_with("layernorm.weight") || ends_with("model.norm.weight")) return {d};
    if (ends_with("q_proj.weight")) return {q, d};
    if (ends_with("o_proj.weight")) return {d, q};
    if (ends_with("q_norm.weight") || ends_with("k_norm.weight")) return {c.head_dim()};
    if (ends_with("k_proj.weight") || ends_with("v_proj.weight")) return {kv, d};
    if (ends_with("gate_proj.weight") || ends_with("up_proj.weight")) return {h, d};
    if (ends_with("down_proj.weight")) return {d, h};
    if (ends_with("q_proj.bias")) return {q};
    if (ends_with("k_proj.bias") || ends_with("v_proj.bias")) return {kv};
    return {};
}

namespace {

std::string shape_string(at::IntArrayRef shape)
{
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i)
        s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + ")";
}

} // namespace

void Model::validate_weights() const
{
    validate_shapes();
    check_finite();
}

void Model::validate_shapes() const
{
    if (static_cast<int>(layers.size()) != config.n_layers)
        throw Error(source_path + ": " + std::to_string(layers.size()) + " decoder layers found, config says " +
                    std::to_string(config.n_layers));
    for (const NamedTensor& t : named_tensors()) {
        if (!t.tensor.defined())
            throw Error(source_path + ": tensor '" + t.name + "' is missing");
        const std::vector<std::int64_t> want = expected_shape(config, t.name);
        if (t.tensor.sizes() != at::IntArrayRef(want))
            throw Error(source_path + ": tensor '" + t.name + "' has shape " + shape_string(t.tensor.sizes()) +
                        ", expected " + shape_string(want) + " from the model configuration");
    }
    for (int i = 0; i < static_cast<int>(layers.size()); ++i)
        for (LinearKind k : kAllLinearKinds)
            if (const kernels::PackedWeights* p = layers[i].packed_weight(k)) {
                const std::string name = linear_name(i, k) + ".weight";
                const std::vector<std::int64_t> want = expected_shape(config, name);
                if (p->rows != want[0] || p->cols != want[1])
                    throw Error(source_path + ": packed Linear '" + name + "' is " + std::to_string(p->rows) + " x " +
                                std::to_string(p->cols) + ", expected " + shape_string(want) +
                                " from the model configuration");
            }
}

bool Model::has_packed_linears() const
{
    for (const DecoderLayer& layer : layers)
        for (const auto& p : layer.packed)
            if (p)
                return true;
    return false;
}

void Model::check_finite() const
{
    for (const NamedTensor& t : named_tensors()) {
        const NonFinite bad = find_nonfinite(t.tensor);
        if (bad.count > 0)
            throw Error(source_path + ": tensor '" + t.name + "' contains " + std::to_string(bad.count) +
                        " NaN/Inf value(s), the first at flat index " + std::to_string(bad.first));
    }
}

Model Model::map(const std::function<at::Tensor(const at::Tensor&)>& fn) const
{
    Model m = *this;
    m.tok_embeddings = fn(tok_embeddings);
    m.final_norm = fn(final_norm);
    m.output = config.tied_embeddings ? m.tok_embeddings : fn(output);
    for (DecoderLayer& layer : m.layers) {
        layer.attn_norm = fn(layer.attn_norm);
        layer.ffn_norm = fn(layer.ffn_norm);
        if (layer.q_norm.defined()) {
            layer.q_norm = fn(layer.q_norm);
            layer.k_norm = fn(layer.k_norm);
        }
        for (at::Tensor& w : layer.linear)
            if (w.defined())
                w = fn(w);
        for (at::Tensor& b : layer.bias)
            if (b.defined())
                b = fn(b);
    }
    return m;
}

Model Model::to(const at::Device& device, at::ScalarType dtype, bool copy) const
{
    return map([&](const at::Tensor& t) { return t.to(device, dtype, /*non_blocking=*/false, copy).contiguous(); });
}

at::Tensor interleaved_to_rotate_half(const at::Tensor& w, int n_heads)
{
    const std::int64_t rows = w.size(0), cols = w.size(1);
    return w.reshape({n_heads, rows / n_heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

at::Tensor rotate_half_to_interleaved(const at::Tensor& w, int n_heads)
{
    const std::int64_t rows = w.size(0), cols = w.size(1);
    return w.reshape({n_heads, 2, rows / n_heads / 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

} // namespace pbllm
