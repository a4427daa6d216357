#include "core/packed_checkpoint.h"

#include "core/error.h"
#include "core/quant/registry.h"
#include "core/hdf5_io.h"
#include "core/packed_hdf5.h"
#include "core/packed_runtime.h"
#include "core/quant/payload.h"
#include "core/quantizers.h"
#include "core/system.h"

#include <ATen/ATen.h>
#include <QDateTime>
#include <QFile>
#include <QFileInfo>
#include <QJsonDocument>
#include <QJsonObject>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <cstring>
#include <fstream>
#include <unistd.h>

#ifndef PBLLM_VERSION
#define PBLLM_VERSION "unknown"
#endif

namespace pbllm {
namespace {

constexpr const char* kFormat = "pbllm-packed";
// Version 2: a family other than plain Llama (model_config's arch, rope_scaling, sliding_window,
// head_dim, q/k/v bias and q/k norm tensors), which a version-1 reader would run as Llama. Llama files stay version 1.
constexpr std::int64_t kFormatVersion = 2;


} // namespace

// ---- packing ---------------------------------------------------------------------------------

std::int64_t PackedLinear::bytes() const
{
    return index_bytes() +
           static_cast<std::int64_t>(codes.size() + signs.size() + grid_zero.size() + signs2.size() + scale_codes.size()) +
           4 * static_cast<std::int64_t>(scale_bases.size()) +
           2 * static_cast<std::int64_t>(grid_scale.size() + mu.size() + alpha.size() + block_params.size() +
                                         column_params.size());
}

PackedLinear pack_linear(const QuantizedLinear& q)
{
    q.validate();
    PackedLinear p;
    p.name = q.name;
    p.rows = q.rows;
    p.cols = q.cols;
    p.method = q.settings.method;
    p.binarizer = q.settings.binarizer;
    p.grid_bits = q.grid_bits();
    p.salient_ratio_requested = q.settings.salient_ratio;
    method_info(q.settings.method).payload().pack(q, p);
    return p;
}

void validate_packed_fields(const PackedLinear& p, const std::string& what)
{
    if (p.rows <= 0 || p.cols <= 0 || p.rows > (1 << 24) || p.cols > (1 << 24))
        throw Error(what + ": implausible shape " + std::to_string(p.rows) + " x " + std::to_string(p.cols));
    method_info(p.method).payload().validate(p, what);
}

QuantizedLinear unpack_linear(const PackedLinear& p, const std::string& what)
{
    validate_packed_fields(p, what);
    return method_info(p.method).payload().unpack(p, what);
}

LinearBits linear_bits(const PackedLinear& p)
{
    LinearBits b;
    b.weights = p.weights();
    b.salient_count = p.salient_count;
    b.index_bytes = p.index_bytes();
    b.bytes = p.bytes();
    b.grid_bits = p.grid_bits;
    b.method = p.method;
    return b;
}

BitsPerWeight bits_per_weight(const std::vector<LinearBits>& linears)
{
    BitsPerWeight b;
    double n = 0.0;
    for (const LinearBits& p : linears) {
        const double w = static_cast<double>(p.weights);
        const BitsPerWeight c = method_info(p.method).payload().conventions(p);
        b.headline += c.headline * w;
        b.with_bitmap += c.with_bitmap * w;
        b.with_index += c.with_index * w;
        b.measured += 8.0 * static_cast<double>(p.bytes);
        n += w;
    }
    if (n > 0) {
        b.headline /= n;
        b.with_bitmap /= n;
        b.with_index /= n;
        b.measured /= n;
    }
    return b;
}

BitsPerWeight bits_per_weight(const std::vector<PackedLinear>& linears)
{
    std::vector<LinearBits> bits;
    for (const PackedLinear& p : linears)
        bits.push_back(linear_bits(p));
    return bits_per_weight(bits);
}

bool has_hdf5_signature(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    char sig[8] = {0};
    in.read(sig, 8);
    return in.gcount() == 8 && std::memcmp(sig, "\x89HDF\r\n\x1a\n", 8) == 0;
}

// ---- HDF5 ------------------------------------------------------------------------------------

void write_packed_linear(const Writer& w, hid_t parent, const PackedLinear& p)
{
    const Hid g = w.group(parent, p.name);
    w.attr(g.get(), "rows", p.rows);
    w.attr(g.get(), "cols", p.cols);
    w.attr(g.get(), "method", to_string(p.method));
    w.attr(g.get(), "binarizer", to_string(p.binarizer));
    w.attr(g.get(), "salient_bits", static_cast<std::int64_t>(p.grid_bits));
    w.attr(g.get(), "groupsize", static_cast<std::int64_t>(p.groupsize));
    w.attr(g.get(), "salient_ratio_requested", p.salient_ratio_requested);
    w.attr(g.get(), "salient_count", p.salient_count);
    method_info(p.method).payload().write(w, g.get(), p);
}

PackedLinear read_packed_linear(const Reader& r, hid_t parent, const std::string& name, const std::string& what,
                                const std::int64_t* expected_rows_cols)
{
    const Hid g = r.group(parent, name);
    PackedLinear p;
    p.name = name;
    p.rows = r.attr_int(g.get(), "rows");
    p.cols = r.attr_int(g.get(), "cols");
    if (expected_rows_cols && (p.rows != expected_rows_cols[0] || p.cols != expected_rows_cols[1]))
        throw Error(what + ": stored shape " + std::to_string(p.rows) + " x " + std::to_string(p.cols) +
                    " does not match the model configuration");
    try {
        p.method = parse_method(r.attr_string(g.get(), "method"));
        p.binarizer = parse_binarizer(r.attr_string(g.get(), "binarizer"));
    } catch (const Error& e) {
        throw Error(what + ": " + e.what());
    }
    p.grid_bits = static_cast<int>(r.attr_int(g.get(), "salient_bits"));
    p.groupsize = static_cast<int>(r.attr_int(g.get(), "groupsize"));
    p.salient_ratio_requested = r.attr_double(g.get(), "salient_ratio_requested");
    p.salient_count = r.attr_int(g.get(), "salient_count");
    method_info(p.method).payload().read(r, g.get(), p, what);
    return p;
}

std::string packed_creation_time()
{
    if (const char* epoch = std::getenv("SOURCE_DATE_EPOCH")) {
        bool ok = false;
        const qint64 seconds = QByteArray(epoch).toLongLong(&ok);
        if (ok)
            return QDateTime::fromSecsSinceEpoch(seconds, Qt::UTC).toString(Qt::ISODate).toStdString();
    }
    return QDateTime::currentDateTimeUtc().toString(Qt::ISODate).toStdString();
}

struct PackedCheckpointWriter::Parts {
    Parts(const std::string& path, const std::string& staging_dir) : file(path, staging_dir), w(path) {}
    StagedHdf5File file;
    Writer w;
    Hid tensors, linear;
};

PackedCheckpointWriter::PackedCheckpointWriter(const std::string& path, const PackedHeader& h,
                                               const std::string& staging_dir)
    : parts_(std::make_unique<Parts>(path, staging_dir))
{
    const Writer& w = parts_->w;
    const hid_t root = parts_->file.get();
    w.attr(root, "format", std::string(kFormat));
    const ModelConfig& c = h.config;
    const bool plain_llama = c.arch == "llama" && c.rope_scaling.type == RopeScaling::Type::None &&
                             c.sliding_window == 0 && c.explicit_head_dim == 0;
    w.attr(root, "format_version", plain_llama ? std::int64_t{1} : kFormatVersion);
    w.attr(root, "program_version", std::string(PBLLM_VERSION));
    w.attr(root, "model_config", h.config.to_json());
    w.attr(root, "plan", h.plan.to_json());
    w.attr(root, "source_sha256", h.source_sha256);
    w.attr(root, "calibration_sha256", h.calibration_sha256);
    w.attr(root, "seed", static_cast<std::int64_t>(h.plan.config.seed));
    w.attr(root, "created", h.created.empty() ? packed_creation_time() : h.created);
    if (!h.training_json.empty())
        w.attr(root, "training", h.training_json);
    w.bytes(root, "tokenizer", std::vector<std::uint8_t>(h.tokenizer_bytes.begin(), h.tokenizer_bytes.end()));
    parts_->tensors = w.group(root, "tensors");
    parts_->linear = w.group(root, "linear");
}

PackedCheckpointWriter::~PackedCheckpointWriter() = default;

void PackedCheckpointWriter::add_tensor(const std::string& name, const at::Tensor& tensor)
{
    const at::Tensor h = tensor.to(at::kCPU).to(at::kHalf).contiguous();
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(h.numel()));
    std::memcpy(bits.data(), h.data_ptr(), bits.size() * 2);
    std::vector<hsize_t> dims(h.sizes().begin(), h.sizes().end());
    parts_->w.halves(parts_->tensors.get(), name, bits, dims);
}

void PackedCheckpointWriter::add_linear(const PackedLinear& linear)
{
    write_packed_linear(parts_->w, parts_->linear.get(), linear);
}

void PackedCheckpointWriter::commit()
{
    parts_->tensors = Hid();
    parts_->linear = Hid();
    parts_->file.commit();
}

PackedHeader packed_header(const QuantizedModel& qm)
{
    PackedHeader h;
    h.config = qm.model.config;
    h.plan = qm.plan;
    h.source_sha256 = qm.source_sha256;
    h.calibration_sha256 = qm.calibration_sha256;
    h.tokenizer_bytes = qm.tokenizer_bytes;
    h.training_json = qm.training_json;
    return h;
}

void write_packed_checkpoint(const QuantizedModel& qm, const std::string& path)
{
    quiet_hdf5();
    std::vector<PackedLinear> packed;
    for (const QuantizedLinear& q : qm.linears)
        packed.push_back(pack_linear(q));
    std::set<std::string> quantized;
    for (const PackedLinear& p : packed)
        quantized.insert(p.name + ".weight");

    PackedCheckpointWriter writer(path, packed_header(qm));
    for (const NamedTensor& t : qm.model.named_tensors())
        if (!quantized.count(t.name))
            writer.add_tensor(t.name, t.tensor);
    for (const PackedLinear& p : packed)
        writer.add_linear(p);
    writer.commit();
}

namespace {

PackedCheckpoint read_packed_checkpoint_unchecked(const std::string& path, PackedLoad load)
{
    quiet_hdf5();
    if (!QFileInfo(QString::fromStdString(path)).isFile())
        throw Error(path + ": no such file");
    if (!has_hdf5_signature(path))
        throw Error(path + ": not an HDF5 file");
    Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!file.ok())
        throw Error(path + ": HDF5 cannot open the file (truncated or corrupt)");
    const Reader r(path);
    const hid_t root = file.get();
    if (r.attr_string(root, "format") != kFormat)
        r.fail("not a PB-LLM packed checkpoint (format attribute is not '" + std::string(kFormat) + "')");
    const std::int64_t version = r.attr_int(root, "format_version");
    if (version < 1 || version > kFormatVersion)
        r.fail("format version " + std::to_string(version) + " is not supported (this program reads up to " +
               std::to_string(kFormatVersion) + ")");

    PackedCheckpoint ck;
    ck.file_bytes = QFileInfo(QString::fromStdString(path)).size();
    ck.program_version = r.attr_string(root, "program_version");
    ck.created = r.attr_string(root, "created");
    QuantizedModel& qm = ck.quantized;
    qm.source_sha256 = r.attr_string(root, "source_sha256");
    qm.calibration_sha256 = r.attr_string(root, "calibration_sha256");
    qm.plan = QuantPlan::from_json(r.attr_string(root, "plan"), path + " (plan)");
    if (H5Aexists(root, "training") > 0)
        qm.training_json = r.attr_string(root, "training");
    const std::vector<std::uint8_t> tok = r.bytes(root, "tokenizer");
    qm.tokenizer_bytes.assign(tok.begin(), tok.end());

    Model& m = qm.model;
    m.config = ModelConfig::from_json(r.attr_string(root, "model_config"), path + " (model_config)");
    const ModelConfig& c = m.config;
    const bool runtime = load == PackedLoad::Runtime;
    if (runtime) {
        // The file holds the full-precision tensors in FP16 and the Linears packed. In memory the
        // tensors stay FP16, a packed Linear's runtime layout is at most ~1.25x its file bytes
        // (README), a quantized head is dequantized to float32, and one Linear at a time is read
        // (its arrays, or its float32 matrix when it runs dequantized).
        const std::int64_t d = c.dim, v = c.vocab_size;
        const std::int64_t layer_linears = static_cast<std::int64_t>(c.n_layers) *
                                           (d * c.q_dim() * 2 + d * c.kv_dim() * 2 + 3 * d * c.hidden_dim);
        const bool quantized_head = r.exists(root, "linear") && r.exists(r.group(root, "linear").get(), "lm_head");
        const std::int64_t fp16_tensors = 2 * (c.parameter_count() - layer_linears - (quantized_head ? v * d : 0));
        const std::int64_t packed_file = std::max<std::int64_t>(0, ck.file_bytes - fp16_tensors);
        const std::int64_t one_linear = 4 * d * std::max({d, std::int64_t{c.q_dim()}, std::int64_t{c.hidden_dim}}); // the largest, float32
        require_memory(fp16_tensors + packed_file * 5 / 4 + (quantized_head ? 4 * v * d : 0) + one_linear + (64ll << 20),
                       path + " kept packed in memory");
    } else
        require_memory(c.parameter_count() * 4, path + " (" + std::to_string(c.parameter_count()) + " parameters)");
    m.format = ModelFormat::PbllmPacked;
    m.source_path = path;
    m.file_dtype = "packed";
    m.file_bytes = ck.file_bytes;
    m.embedded_tokenizer = qm.tokenizer_bytes;

    const Hid tensors = r.group(root, "tensors");
    const Hid linear = r.group(root, "linear");
    // A quantized Linear is dequantized into a float32 tensor, or (runtime) kept packed in
    // `packed` with the tensor left undefined; one whose layout the packed kernels cannot run, and
    // a quantized head (packed == nullptr: only decoder-layer Linears run packed), is dequantized
    // either way.
    std::map<std::string, std::vector<std::string>> dequantized_because; // reason -> Linears
    auto load_linear = [&](const std::string& linear_group, const std::vector<hsize_t>& shape,
                           PackedWeightsPtr* packed) -> at::Tensor {
        const std::string what = path + ": Linear '" + linear_group + "'";
        const std::int64_t expected[2] = {static_cast<std::int64_t>(shape[0]), static_cast<std::int64_t>(shape[1])};
        PackedLinear p = read_packed_linear(r, linear.get(), linear_group, what, expected);
        ck.bits.push_back(linear_bits(p));
        if (runtime && packed && packed_kernels_unsupported(p).empty()) {
            *packed = build_packed_weights(p, what);
            return at::Tensor();
        }
        if (runtime && packed)
            dequantized_because[packed_kernels_unsupported(p)].push_back(linear_group);
        QuantizedLinear q = unpack_linear(p, what);
        at::Tensor w = q.dequantized;
        if (!runtime) {
            ck.packed.push_back(std::move(p));
            qm.linears.push_back(std::move(q));
        }
        return w;
    };
    auto load_tensor = [&](const std::string& name, std::vector<hsize_t> shape, PackedWeightsPtr* packed = nullptr)
        -> at::Tensor {
        const std::string linear_group = name.substr(0, name.size() - std::string(".weight").size());
        if (shape.size() == 2 && r.exists(linear.get(), linear_group))
            return load_linear(linear_group, shape, packed);
        if (!r.exists(tensors.get(), name))
            r.fail("tensor '" + name + "' is missing (neither under /tensors nor /linear)");
        std::vector<std::int64_t> sizes(shape.begin(), shape.end());
        at::Tensor h; // read in place: no second copy of an embedding beside it
        r.halves_into(tensors.get(), name, shape, [&] {
            h = at::empty(sizes, at::kHalf);
            return static_cast<std::uint16_t*>(h.data_ptr());
        });
        return runtime ? h : h.to(at::kFloat); // runtime: FP16 in memory, converted per use
    };
    const hsize_t d = c.dim, v = c.vocab_size, hd = c.head_dim();
    m.tok_embeddings = load_tensor("model.embed_tokens.weight", {v, d});
    m.layers.resize(c.n_layers);
    for (int i = 0; i < c.n_layers; ++i) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        m.layers[i].attn_norm = load_tensor(prefix + "input_layernorm.weight", {d});
        m.layers[i].ffn_norm = load_tensor(prefix + "post_attention_layernorm.weight", {d});
        if (c.qk_norm()) {
            m.layers[i].q_norm = load_tensor(prefix + "self_attn.q_norm.weight", {hd});
            m.layers[i].k_norm = load_tensor(prefix + "self_attn.k_norm.weight", {hd});
        }
        for (LinearKind k : kAllLinearKinds) {
            const std::vector<std::int64_t> dims = expected_shape(c, linear_name(i, k) + ".weight");
            const std::vector<hsize_t> shape(dims.begin(), dims.end());
            m.layers[i].weight(k) =
                load_tensor(linear_name(i, k) + ".weight", shape, &m.layers[i].packed[static_cast<int>(k)]);
            if (c.qkv_bias() && (k == LinearKind::Q || k == LinearKind::K || k == LinearKind::V))
                m.layers[i].bias[static_cast<int>(k)] = load_tensor(linear_name(i, k) + ".bias", {shape[0]});
        }
        // Each Linear's file arrays are freed once its layout is built: returned here, they do not
        // add up to 256 MiB (glibc's trim threshold) to the peak (LLaMA-7B: 2.8 GiB plus that).
        if (runtime)
            return_free_heap_memory();
    }
    for (const auto& [why, names] : dequantized_because) // one note per reason, not per Linear
        m.notes.push_back(names.size() == 1 ? names.front() + ": " + why + "; it runs dequantized"
                                            : std::to_string(names.size()) + " Linears (" + names.front() + ", ...): " +
                                                  why + "; they run dequantized");
    m.final_norm = load_tensor("model.norm.weight", {d});
    m.output = c.tied_embeddings ? m.tok_embeddings : load_tensor("lm_head.weight", {v, d});
    m.validate_weights();
    return ck;
}

} // namespace

PackedCheckpoint read_packed_checkpoint(const std::string& path, PackedLoad load)
{
    // First in a child process: a file that crashes the HDF5 library must not crash this one.
    check_hdf5_structure(path, [&] {
        (void)read_packed_checkpoint_unchecked(path, load);
    });
    return read_packed_checkpoint_unchecked(path, load);
}

} // namespace pbllm
