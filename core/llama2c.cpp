#include "core/llama2c.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/system.h"

#include <ATen/ATen.h>

#include <cstring>
#include <limits>

namespace pbllm {
namespace {

constexpr std::uint32_t kMagicV1 = 0x616b3432; // "ak42" as a little-endian uint32
constexpr std::int64_t kHeaderV1Bytes = 256;

struct Header {
    ModelConfig config;
    int version = 0;
    std::int64_t data_offset = 0;
};

std::int32_t read_i32(const std::uint8_t* p)
{
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

Header parse_header(const MappedFile& file)
{
    const std::string& path = file.path();
    Header h;
    auto require = [&](std::int64_t bytes, const char* what) {
        if (static_cast<std::int64_t>(file.size()) < bytes)
            throw Error(path + ": file is truncated: " + what + " needs " + std::to_string(bytes) +
                        " bytes, the file has " + std::to_string(file.size()));
    };
    require(28, "the llama2.c header");
    const std::uint8_t* p = file.data();
    std::uint32_t magic;
    std::memcpy(&magic, p, 4);
    int fields_at = 0;
    bool shared = false;
    if (magic == kMagicV1) {
        require(kHeaderV1Bytes, "the version 1 header");
        h.version = read_i32(p + 4);
        if (h.version != 1)
            throw Error(path + ": llama2.c checkpoint version " + std::to_string(h.version) +
                        " is not supported (only fp32 versions 0 and 1 are)");
        fields_at = 8;
        shared = p[fields_at + 28] != 0;
        h.data_offset = kHeaderV1Bytes;
    } else {
        h.data_offset = 28;
    }
    ModelConfig& c = h.config;
    c.dim = read_i32(p + fields_at);
    c.hidden_dim = read_i32(p + fields_at + 4);
    c.n_layers = read_i32(p + fields_at + 8);
    c.n_heads = read_i32(p + fields_at + 12);
    c.n_kv_heads = read_i32(p + fields_at + 16);
    c.vocab_size = read_i32(p + fields_at + 20);
    c.max_seq_len = read_i32(p + fields_at + 24);
    if (h.version == 0) {
        // Legacy convention: a negative vocab_size means the classifier is stored separately.
        shared = c.vocab_size > 0;
        if (c.vocab_size < 0) // INT_MIN has no positive counterpart: 0, which validate() refuses
            c.vocab_size = c.vocab_size == std::numeric_limits<int>::min() ? 0 : -c.vocab_size;
    }
    c.tied_embeddings = shared;
    c.validate(path + " (llama2.c header)");
    return h;
}

/// Copies consecutive fp32 tensors out of the mapped file, checking bounds for each.
class TensorCursor {
public:
    TensorCursor(const MappedFile& file, std::int64_t offset) : file_(file), offset_(offset) {}

    at::Tensor take(at::IntArrayRef shape, const std::string& name)
    {
        std::int64_t numel = 1;
        for (std::int64_t s : shape)
            numel *= s;
        const std::int64_t bytes = numel * 4;
        if (offset_ + bytes > static_cast<std::int64_t>(file_.size()))
            throw Error(file_.path() + ": file is truncated: tensor '" + name + "' needs bytes " +
                        std::to_string(offset_) + ".." + std::to_string(offset_ + bytes) + ", the file has " +
                        std::to_string(file_.size()));
        at::Tensor t = at::empty(shape, at::kFloat);
        std::memcpy(t.data_ptr<float>(), file_.data() + offset_, static_cast<std::size_t>(bytes));
        offset_ += bytes;
        return t;
    }
    void skip(std::int64_t floats) { offset_ += floats * 4; }
    std::int64_t offset() const { return offset_; }

private:
    const MappedFile& file_;
    std::int64_t offset_;
};

/// Reads one tensor per layer for `field`, stacked in the file as (n_layers, rows[, cols]).
template <typename Assign>
void take_per_layer(TensorCursor& cur, Model& m, at::IntArrayRef shape, const std::string& field, Assign assign)
{
    for (int i = 0; i < m.config.n_layers; ++i)
        assign(m.layers[i], cur.take(shape, "layers." + std::to_string(i) + "." + field));
}

} // namespace

std::int64_t llama2c_v0_file_size(const ModelConfig& c, bool shared_classifier)
{
    const std::int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size, L = c.n_layers;
    const std::int64_t floats = v * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d + 3 * L * h * d + d +
                                static_cast<std::int64_t>(c.max_seq_len) * c.head_dim() + (shared_classifier ? 0 : v * d);
    return 28 + floats * 4;
}

Model load_llama2c(const std::string& path)
{
    static_assert(sizeof(float) == 4, "fp32 checkpoints need 4-byte floats");
    MappedFile file(path);
    const Header header = parse_header(file);
    const ModelConfig& c = header.config;
    require_memory(c.parameter_count() * 4, path + " (" + std::to_string(c.parameter_count()) + " parameters)");

    Model m;
    m.config = c;
    m.format = header.version == 1 ? ModelFormat::Llama2cV1 : ModelFormat::Llama2cV0;
    m.source_path = path;
    m.file_dtype = "f32";
    m.file_bytes = static_cast<std::int64_t>(file.size());
    m.layers.resize(c.n_layers);

    const std::int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
    TensorCursor cur(file, header.data_offset);
    using L = DecoderLayer;
    auto q = [&](L& l, at::Tensor t) { l.weight(LinearKind::Q) = interleaved_to_rotate_half(t, c.n_heads); };
    auto k = [&](L& l, at::Tensor t) { l.weight(LinearKind::K) = interleaved_to_rotate_half(t, c.n_kv_heads); };
    auto vv = [](L& l, at::Tensor t) { l.weight(LinearKind::V) = t; };
    auto o = [](L& l, at::Tensor t) { l.weight(LinearKind::O) = t; };
    auto gate = [](L& l, at::Tensor t) { l.weight(LinearKind::Gate) = t; };
    auto down = [](L& l, at::Tensor t) { l.weight(LinearKind::Down) = t; };
    auto up = [](L& l, at::Tensor t) { l.weight(LinearKind::Up) = t; };
    auto attn_norm = [](L& l, at::Tensor t) { l.attn_norm = t; };
    auto ffn_norm = [](L& l, at::Tensor t) { l.ffn_norm = t; };

    if (header.version == 0) {
        m.tok_embeddings = cur.take({v, d}, "token_embedding");
        take_per_layer(cur, m, {d}, "rms_att", attn_norm);
        take_per_layer(cur, m, {d, d}, "wq", q);
        take_per_layer(cur, m, {kv, d}, "wk", k);
        take_per_layer(cur, m, {kv, d}, "wv", vv);
        take_per_layer(cur, m, {d, d}, "wo", o);
        take_per_layer(cur, m, {d}, "rms_ffn", ffn_norm);
        take_per_layer(cur, m, {h, d}, "w1", gate);
        take_per_layer(cur, m, {d, h}, "w2", down);
        take_per_layer(cur, m, {h, d}, "w3", up);
        m.final_norm = cur.take({d}, "rms_final");
        // RoPE tables (cos and sin, max_seq_len x head_dim/2 each) are recomputed, not read.
        cur.take({static_cast<std::int64_t>(c.max_seq_len) * c.head_dim()}, "freq_cis");
    } else {
        take_per_layer(cur, m, {d}, "attention_norm", attn_norm);
        take_per_layer(cur, m, {d}, "ffn_norm", ffn_norm);
        m.final_norm = cur.take({d}, "norm");
        m.tok_embeddings = cur.take({v, d}, "tok_embeddings");
        take_per_layer(cur, m, {d, d}, "wq", q);
        take_per_layer(cur, m, {kv, d}, "wk", k);
        take_per_layer(cur, m, {kv, d}, "wv", vv);
        take_per_layer(cur, m, {d, d}, "wo", o);
        take_per_layer(cur, m, {h, d}, "w1", gate);
        take_per_layer(cur, m, {d, h}, "w2", down);
        take_per_layer(cur, m, {h, d}, "w3", up);
    }
    m.output = c.tied_embeddings ? m.tok_embeddings : cur.take({v, d}, "output (classifier)");
    if (cur.offset() != static_cast<std::int64_t>(file.size()))
        throw Error(path + ": " + std::to_string(file.size() - cur.offset()) +
                    " unexpected trailing bytes after the last tensor (header says dim " + std::to_string(c.dim) +
                    ", " + std::to_string(c.n_layers) + " layers, vocab " + std::to_string(c.vocab_size) +
                    "); the header does not match the data");
    m.validate_weights();
    return m;
}

void save_llama2c_v1(const Model& model, const std::string& path)
{
    const ModelConfig& c = model.config;
    // The llama2.c header has none of these: a reader would run the model with Llama 2's defaults.
    if (c.arch != "llama" || c.rope_theta != 10000.0f || c.rope_scaling.type != RopeScaling::Type::None ||
        c.sliding_window > 0 || c.explicit_head_dim > 0)
        throw Error(path + ": llama2.c checkpoints cannot record this model (model type " + c.arch + ", rope_theta " +
                    std::to_string(c.rope_theta) + (c.rope_scaling.type != RopeScaling::Type::None ? ", RoPE scaling" : "") +
                    (c.sliding_window > 0 ? ", a sliding window" : "") +
                    (c.explicit_head_dim > 0 ? ", head_dim " + std::to_string(c.explicit_head_dim) : "") +
                    "); llama2.c assumes Llama with rope_theta 10000. Convert to hf instead");
    std::string header(kHeaderV1Bytes, '\0');
    const std::int32_t fields[9] = {static_cast<std::int32_t>(kMagicV1), 1, c.dim, c.hidden_dim, c.n_layers,
                                    c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len};
    std::memcpy(header.data(), fields, sizeof fields);
    header[sizeof fields] = c.tied_embeddings ? 1 : 0;

    AtomicFileWriter out(path);
    out.write(header.data(), header.size());
    auto put = [&](const at::Tensor& t) {
        const at::Tensor f = t.to(at::kCPU, at::kFloat).contiguous();
        out.write(f.data_ptr<float>(), static_cast<std::size_t>(f.numel()) * 4);
    };
    for (const DecoderLayer& l : model.layers) put(l.attn_norm);
    for (const DecoderLayer& l : model.layers) put(l.ffn_norm);
    put(model.final_norm);
    put(model.tok_embeddings);
    for (const DecoderLayer& l : model.layers) put(rotate_half_to_interleaved(l.weight(LinearKind::Q), c.n_heads));
    for (const DecoderLayer& l : model.layers) put(rotate_half_to_interleaved(l.weight(LinearKind::K), c.n_kv_heads));
    for (LinearKind kind : {LinearKind::V, LinearKind::O, LinearKind::Gate, LinearKind::Down, LinearKind::Up})
        for (const DecoderLayer& l : model.layers) put(l.weight(kind));
    if (!c.tied_embeddings)
        put(model.output);
    out.commit();
}

} // namespace pbllm
