#include "core/hf_model.h"

#include "core/architecture.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "core/system.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <memory>
#include <optional>
#include <set>

namespace pbllm {
namespace {

struct HfPaths {
    QString dir;
    QString config;
    QString index;  ///< "" when single-file
    QString single; ///< the one .safetensors file when not sharded
};

HfPaths resolve_paths(const std::string& path)
{
    const QFileInfo info(QString::fromStdString(path));
    if (!info.exists())
        throw Error(path + ": no such file or folder");
    HfPaths p;
    p.dir = info.isDir() ? info.absoluteFilePath() : info.absolutePath();
    p.config = p.dir + "/config.json";
    if (info.isFile() && info.fileName().endsWith(".safetensors")) {
        p.single = info.absoluteFilePath();
    } else if (info.isFile() && info.fileName().endsWith(".index.json")) {
        p.index = info.absoluteFilePath();
    } else if (QFileInfo::exists(p.dir + "/model.safetensors")) {
        p.single = p.dir + "/model.safetensors";
    } else if (QFileInfo::exists(p.dir + "/model.safetensors.index.json")) {
        p.index = p.dir + "/model.safetensors.index.json";
    } else {
        throw Error(p.dir.toStdString() + ": no model.safetensors or model.safetensors.index.json in this folder");
    }
    return p;
}

QJsonObject read_json_object(const QString& path)
{
    QFile f(path);
    if (!f.open(QIODevice::ReadOnly))
        throw Error(path.toStdString() + ": cannot open: " + f.errorString().toStdString());
    QJsonParseError err{};
    const QJsonDocument doc = QJsonDocument::fromJson(f.readAll(), &err);
    if (err.error != QJsonParseError::NoError || !doc.isObject())
        throw Error(path.toStdString() + ": not a JSON object (" + err.errorString().toStdString() + " at offset " +
                    std::to_string(err.offset) + ")");
    return doc.object();
}

ModelConfig parse_config(const QJsonObject& o, const QString& path)
{
    const std::string where = path.toStdString();
    // Old Llama configs (and llama2.c conversions) omit model_type.
    const Architecture& arch = architecture(o.value("model_type").toString("llama").toStdString(), where);
    auto integer = [&](const char* key, int fallback, bool required) {
        const QJsonValue v = o.value(key);
        if (v.isUndefined()) {
            if (required)
                throw Error(where + ": required key '" + key + "' is missing");
            return fallback;
        }
        if (!v.isDouble() || v.toDouble() != static_cast<double>(v.toInt()))
            throw Error(where + ": key '" + key + "' is not an integer");
        return v.toInt();
    };
    ModelConfig c;
    c.dim = integer("hidden_size", 0, true);
    c.hidden_dim = integer("intermediate_size", 0, true);
    c.n_layers = integer("num_hidden_layers", 0, true);
    c.n_heads = integer("num_attention_heads", 0, true);
    c.n_kv_heads = integer("num_key_value_heads", c.n_heads, false);
    c.vocab_size = integer("vocab_size", 0, true);
    c.max_seq_len = integer("max_position_embeddings", 2048, false);
    c.norm_eps = static_cast<float>(o.value("rms_norm_eps").toDouble(1e-6));
    c.rope_theta = static_cast<float>(o.value("rope_theta").toDouble(10000.0));
    c.tied_embeddings = o.value("tie_word_embeddings").toBool(false);
    c.arch = std::string(arch.model_type);
    if (o.value("use_sliding_window").toBool(false)) // Qwen2: windows on some layers only
        throw Error(where + ": use_sliding_window is set: per-layer sliding windows are not supported");
    for (const char* key : {"attention_bias", "mlp_bias"}) // Llama configs may add biases everywhere
        if (o.value(key).toBool(false))
            throw Error(where + ": " + key + " is set: biases on those Linears are not supported for model type " +
                        c.arch);
    c.rope_scaling = RopeScaling::from_json(o.value("rope_scaling"), where);
    if (arch.sliding_window && o.contains("sliding_window") && !o.value("sliding_window").isNull()) {
        c.sliding_window = integer("sliding_window", 0, false);
        // A window at least as long as the context never takes effect (Mistral v0.2+ write null).
        if (c.sliding_window >= c.max_seq_len)
            c.sliding_window = 0;
    }
    if (const QJsonValue v = o.value("head_dim"); !v.isUndefined() && !v.isNull()) { // Qwen3, Mistral-Nemo: not hidden_size / num_attention_heads
        const int head_dim = integer("head_dim", 0, false);
        if (head_dim <= 0 || head_dim > 1024)
            throw Error(where + ": head_dim " + std::to_string(head_dim) + " is outside [1, 1024]");
        c.set_head_dim(head_dim);
    }
    c.validate(where);
    return c;
}

std::string dtype_name(at::ScalarType t)
{
    switch (t) {
    case at::kHalf: return "f16";
    case at::kBFloat16: return "bf16";
    default: return "f32";
    }
}

} // namespace

bool looks_like_hf(const std::string& path)
{
    const QFileInfo info(QString::fromStdString(path));
    if (info.isDir())
        return QFileInfo::exists(info.absoluteFilePath() + "/config.json");
    return info.fileName().endsWith(".safetensors") || info.fileName().endsWith(".index.json") ||
           info.fileName() == "config.json";
}

Model load_hf(const std::string& path, bool check_finite)
{
    const HfPaths paths = resolve_paths(path);
    if (!QFileInfo::exists(paths.config))
        throw Error(paths.config.toStdString() + ": missing; a Hugging Face model needs its config.json");
    Model m;
    const QJsonObject config_json = read_json_object(paths.config);
    m.config = parse_config(config_json, paths.config);
    m.synthetic = config_json.value(kSyntheticConfigKey).toString().toStdString();
    m.format = ModelFormat::HuggingFace;
    m.source_path = paths.dir.toStdString();
    const ModelConfig& c = m.config;

    // name -> file that holds it
    std::map<std::string, std::string> where;
    std::map<std::string, std::shared_ptr<SafetensorsFile>> files;
    if (!paths.single.isEmpty()) {
        auto f = std::make_shared<SafetensorsFile>(paths.single.toStdString());
        files[f->path()] = f;
        for (const auto& kv : f->entries())
            where[kv.first] = f->path();
    } else {
        const QJsonObject index = read_json_object(paths.index);
        const QJsonObject map = index.value("weight_map").toObject();
        if (map.isEmpty())
            throw Error(paths.index.toStdString() + ": no 'weight_map' object");
        for (auto it = map.begin(); it != map.end(); ++it) {
            const QString shard = paths.dir + "/" + it.value().toString();
            if (it.value().toString().contains('/') || !QFileInfo::exists(shard))
                throw Error(paths.index.toStdString() + ": shard '" + it.value().toString().toStdString() +
                            "' for tensor '" + it.key().toStdString() + "' does not exist");
            const std::string shard_path = shard.toStdString();
            if (!files.count(shard_path))
                files[shard_path] = std::make_shared<SafetensorsFile>(shard_path);
            if (!files[shard_path]->contains(it.key().toStdString()))
                throw Error(shard_path + ": tensor '" + it.key().toStdString() +
                            "' listed in the index is not in this shard");
            where[it.key().toStdString()] = shard_path;
        }
    }
    for (const auto& f : files)
        m.file_bytes += QFileInfo(QString::fromStdString(f.first)).size();
    std::set<at::ScalarType> stored_types;
    auto take = [&](const std::string& name) {
        const auto it = where.find(name);
        if (it == where.end())
            throw Error(m.source_path + ": tensor '" + name + "' is missing");
        at::Tensor t = files.at(it->second)->view(name);
        if (!at::isFloatingType(t.scalar_type()) || t.scalar_type() == at::kDouble)
            throw Error(it->second + ": tensor '" + name + "' is stored as " + c10::toString(t.scalar_type()) +
                        "; weights must be F32, F16 or BF16");
        stored_types.insert(t.scalar_type());
        return t;
    };
    m.tok_embeddings = take("model.embed_tokens.weight");
    m.layers.resize(c.n_layers);
    for (int i = 0; i < c.n_layers; ++i) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        m.layers[i].attn_norm = take(prefix + "input_layernorm.weight");
        m.layers[i].ffn_norm = take(prefix + "post_attention_layernorm.weight");
        for (LinearKind k : kAllLinearKinds)
            m.layers[i].weight(k) = take(linear_name(i, k) + ".weight");
        if (c.qkv_bias())
            for (LinearKind k : {LinearKind::Q, LinearKind::K, LinearKind::V})
                m.layers[i].bias[static_cast<int>(k)] = take(linear_name(i, k) + ".bias");
        if (c.qk_norm()) {
            m.layers[i].q_norm = take(prefix + "self_attn.q_norm.weight");
            m.layers[i].k_norm = take(prefix + "self_attn.k_norm.weight");
        }
    }
    m.final_norm = take("model.norm.weight");
    if (c.tied_embeddings) {
        m.output = m.tok_embeddings;
    } else {
        if (!where.count("lm_head.weight"))
            throw Error(m.source_path + ": tensor 'lm_head.weight' is missing and config.json does not set "
                                        "tie_word_embeddings");
        m.output = take("lm_head.weight");
    }
    m.file_dtype = stored_types.size() == 1 ? dtype_name(*stored_types.begin()) : "mixed";
    m.validate_shapes();
    if (check_finite)
        m.check_finite();
    return m;
}

std::string prepare_hf_folder(const std::string& dir, bool overwrite)
{
    QDir qdir(QString::fromStdString(dir));
    if (qdir.exists() && !qdir.isEmpty(QDir::AllEntries | QDir::NoDotAndDotDot) && !overwrite)
        throw Error(dir + ": folder exists and is not empty; refusing to overwrite (choose another folder or "
                          "allow overwriting)");
    if (!qdir.exists() && !QDir().mkpath(qdir.absolutePath()))
        throw Error(dir + ": cannot create folder");
    return qdir.absolutePath().toStdString();
}

std::string hf_config_json(const ModelConfig& c, at::ScalarType dtype, const std::string& synthetic,
                           const Tokenizer* tokenizer)
{
    QJsonObject cfg;
    const Architecture& arch = architecture(c.arch, "export");
    cfg.insert("architectures", QJsonArray{QString::fromLatin1(arch.hf_class.data(), static_cast<qsizetype>(arch.hf_class.size()))});
    cfg.insert("model_type", QString::fromStdString(c.arch));
    cfg.insert("hidden_size", c.dim);
    cfg.insert("intermediate_size", c.hidden_dim);
    cfg.insert("num_hidden_layers", c.n_layers);
    cfg.insert("num_attention_heads", c.n_heads);
    cfg.insert("num_key_value_heads", c.n_kv_heads);
    if (c.explicit_head_dim > 0)
        cfg.insert("head_dim", c.explicit_head_dim);
    cfg.insert("vocab_size", c.vocab_size);
    cfg.insert("max_position_embeddings", c.max_seq_len);
    cfg.insert("rms_norm_eps", static_cast<double>(c.norm_eps));
    cfg.insert("rope_theta", static_cast<double>(c.rope_theta));
    cfg.insert("tie_word_embeddings", c.tied_embeddings);
    cfg.insert("rope_scaling", c.rope_scaling.to_json());
    if (arch.sliding_window)
        cfg.insert("sliding_window", c.sliding_window > 0 ? QJsonValue(c.sliding_window) : QJsonValue::Null);
    cfg.insert("hidden_act", "silu");
    const int bos = tokenizer ? tokenizer->bos_id() : -1;
    QJsonArray stops;
    if (tokenizer)
        for (int id : tokenizer->stop_ids())
            stops.append(id);
    cfg.insert("bos_token_id", bos >= 0 ? QJsonValue(bos) : QJsonValue::Null);
    cfg.insert("eos_token_id", stops.isEmpty() ? QJsonValue(QJsonValue::Null) : stops.size() == 1 ? stops.at(0) : QJsonValue(stops));
    cfg.insert("torch_dtype", dtype == at::kHalf ? "float16" : dtype == at::kBFloat16 ? "bfloat16" : "float32");

    if (!synthetic.empty())
        cfg.insert(kSyntheticConfigKey, QString::fromStdString(synthetic));
    return QJsonDocument(cfg).toJson().toStdString();
}

void save_hf(const Model& model, const std::string& dir, const HfExportOptions& options)
{
    const ModelConfig& c = model.config;
    // The tokenizer first: one that cannot be read leaves nothing behind.
    std::optional<Tokenizer> tokenizer;
    if (!options.tokenizer_path.empty())
        tokenizer = Tokenizer::from_file(options.tokenizer_path);
    else if (!model.embedded_tokenizer.empty())
        tokenizer = Tokenizer::from_bytes(model.embedded_tokenizer, model.source_path + " (embedded tokenizer)");
    const std::string base = prepare_hf_folder(dir, options.overwrite);

    const at::ScalarType dtype = model.file_dtype == "f16" ? at::kHalf
                                 : model.file_dtype == "bf16" ? at::kBFloat16
                                                              : at::kFloat;
    std::vector<NamedTensor> tensors = model.named_tensors();
    for (NamedTensor& t : tensors)
        t.tensor = t.tensor.to(at::kCPU, dtype);

    write_safetensors(base + "/model.safetensors", tensors, {{"format", "pt"}});
    write_file_atomically(base + "/config.json", hf_config_json(c, dtype, model.synthetic, tokenizer ? &*tokenizer : nullptr));
    if (!options.tokenizer_path.empty())
        copy_tokenizer_files(options.tokenizer_path, base);
    else if (tokenizer)
        write_tokenizer_files(*tokenizer, base);
}

} // namespace pbllm
