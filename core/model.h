#pragma once
// The in-memory Llama-family model: configuration plus named weight tensors on one device.
#include <ATen/core/Tensor.h>
#include <QJsonValue>

#include <algorithm>
#include <array>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pbllm {

namespace kernels {
struct PackedWeights;
}

/// RoPE frequency scaling (config.json "rope_scaling"): "linear" divides every frequency by the
/// factor; "llama3" (Llama 3.1/3.2) divides the low frequencies, keeps the high ones and blends
/// between (see rope_inverse_frequencies in llama.h).
struct RopeScaling {
    enum class Type { None, Linear, Llama3 };
    Type type = Type::None;
    float factor = 1.0f;
    float low_freq_factor = 1.0f;  ///< llama3
    float high_freq_factor = 4.0f; ///< llama3
    int original_max_position = 0; ///< llama3: the context length before scaling

    /// From config.json's "rope_scaling" value (null: none); throws Error naming `origin` and the key.
    static RopeScaling from_json(const QJsonValue& value, const std::string& origin);
    /// The same value as config.json spells it (null when none).
    QJsonValue to_json() const;
};

/// Hyper-parameters of a Llama-family decoder.
struct ModelConfig {
    std::string arch = "llama"; ///< Architecture::model_type (architecture.h)
    int dim = 0;          ///< residual stream width
    int hidden_dim = 0;   ///< SwiGLU inner width
    int n_layers = 0;
    int n_heads = 0;
    int n_kv_heads = 0;   ///< < n_heads means grouped-query attention
    int vocab_size = 0;
    int max_seq_len = 0;  ///< context length the model was trained for
    float norm_eps = 1e-5f;
    float rope_theta = 10000.0f;
    bool tied_embeddings = false; ///< output head shares the token embedding
    RopeScaling rope_scaling;
    int sliding_window = 0; ///< Mistral: attention window in positions (0: none); longer sequences are refused
    /// config.json "head_dim" where it is not dim / n_heads (Qwen3, Mistral-Nemo); 0: dim / n_heads.
    int explicit_head_dim = 0;

    int head_dim() const { return explicit_head_dim > 0 ? explicit_head_dim : n_heads > 0 ? dim / n_heads : 0; }
    /// Width of the attention: q_proj's rows and o_proj's columns (dim unless head_dim is explicit).
    int q_dim() const { return head_dim() * n_heads; }
    /// Records a configuration's head_dim: kept only where it differs from dim / n_heads, so that a
    /// config spelling out the default equals one that does not.
    void set_head_dim(int value);
    /// Whether q_proj, k_proj and v_proj carry biases (the architecture's row says).
    bool qkv_bias() const;
    /// Whether queries and keys are RMS-normalised per head before RoPE (Qwen3's q_norm, k_norm).
    bool qk_norm() const;
    /// The longest sequence this engine runs correctly: the context, or the sliding attention
    /// window when that is shorter (the default for windows, caches and generation).
    int usable_context() const { return sliding_window > 0 ? std::min(max_seq_len, sliding_window) : max_seq_len; }
    int kv_dim() const { return head_dim() * n_kv_heads; }
    /// Number of weight parameters (embedding counted once when tied).
    std::int64_t parameter_count() const;
    /// Throws Error naming `origin` when the numbers cannot describe a model of its architecture.
    void validate(const std::string& origin) const;
    /// Compact JSON with every field (and head_dim, for readers); from_json validates.
    std::string to_json() const;
    static ModelConfig from_json(const std::string& json, const std::string& origin);
};

enum class ModelFormat { Llama2cV0, Llama2cV1, HuggingFace, PbllmPacked };
std::string_view to_string(ModelFormat format);

/// The Linears of a decoder layer, in the order a layer-wise quantizer visits them.
enum class LinearKind { Q, K, V, O, Gate, Up, Down };
constexpr int kLinearKindCount = 7;
constexpr std::array<LinearKind, kLinearKindCount> kAllLinearKinds = {
    LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O,
    LinearKind::Gate, LinearKind::Up, LinearKind::Down};

/// One decoder block. Linear weights are (d_out, d_in), rows = output channels. Q and K rows are
/// in the rotate-half RoPE convention (Hugging Face's); loaders of interleaved formats permute.
struct DecoderLayer {
    at::Tensor attn_norm;
    at::Tensor ffn_norm;
    std::array<at::Tensor, kLinearKindCount> linear;
    /// Linears run from their bits (a packed checkpoint loaded with LoadOptions::packed): the
    /// packed kernels multiply by them and their `linear` tensor is undefined.
    std::array<std::shared_ptr<const kernels::PackedWeights>, kLinearKindCount> packed;
    /// Biases (d_out), undefined where the Linear has none: Qwen2's q, k and v carry them. They stay
    /// in full precision (FP16 in packed files) and are added after the Linear, packed or not.
    std::array<at::Tensor, kLinearKindCount> bias;
    /// Qwen3: RMSNorm weights (head_dim) applied to every head of the queries and keys after
    /// their projection and before RoPE; undefined for other families.
    at::Tensor q_norm, k_norm;

    at::Tensor& weight(LinearKind k) { return linear[static_cast<int>(k)]; }
    const at::Tensor& weight(LinearKind k) const { return linear[static_cast<int>(k)]; }
    const kernels::PackedWeights* packed_weight(LinearKind k) const { return packed[static_cast<int>(k)].get(); }
    const at::Tensor& bias_of(LinearKind k) const { return bias[static_cast<int>(k)]; }
};

struct NamedTensor {
    std::string name; ///< Hugging Face tensor name, e.g. "model.layers.0.mlp.down_proj.weight"
    at::Tensor tensor;
};

/// A loaded model. Tensors are either float32 in memory (what training and quantization use on
/// the CPU: libtorch has no fp16 matmul there) or, for big models, the file's own F16/BF16/F32
/// data memory-mapped (LoadOptions::storage); on CUDA they keep the file's precision.
/// `file_dtype` records what the file stored.
struct Model {
    ModelConfig config;
    at::Tensor tok_embeddings; ///< (vocab, dim)
    std::vector<DecoderLayer> layers;
    at::Tensor final_norm;     ///< (dim)
    at::Tensor output;         ///< (vocab, dim); the same tensor as tok_embeddings when tied

    ModelFormat format = ModelFormat::Llama2cV0;
    std::string source_path;    ///< file or folder it was loaded from
    std::string file_dtype;     ///< "f32", "f16" or "bf16"
    std::int64_t file_bytes = 0;
    std::string tokenizer_path; ///< SentencePiece model found beside it ("" if none)
    std::string embedded_tokenizer; ///< serialized SentencePiece model stored in the file itself
    std::string synthetic; ///< non-empty for random weights written for benchmarks: what they are
    std::vector<std::string> notes; ///< what loading could not do as asked, for the user

    /// True when any Linear runs from its bits (DecoderLayer::packed).
    bool has_packed_linears() const;

    /// Every tensor under its Hugging Face name, in a stable order (output head last, omitted
    /// when tied). Packed Linears are not tensors and are left out.
    std::vector<NamedTensor> named_tensors() const;
    /// Throws Error when a tensor's shape disagrees with the config or it holds NaN/Inf.
    void validate_weights() const;
    /// The shape half of validate_weights: reads no weight data.
    void validate_shapes() const;
    /// The NaN/Inf half: reads every weight once (in parallel, in the stored precision).
    void check_finite() const;
    /// The same model with every tensor replaced by fn(tensor); a tied head stays the embedding.
    Model map(const std::function<at::Tensor(const at::Tensor&)>& fn) const;
    /// Same weights converted to `device` / `dtype` (a no-op copy-free view when they match,
    /// unless `copy`: then every tensor is new memory).
    Model to(const at::Device& device, at::ScalarType dtype, bool copy = false) const;
};

/// "model.layers.3.self_attn.q_proj" (no ".weight"): the name a QuantPlan and the studio use.
std::string linear_name(int layer, LinearKind kind);
/// "q_proj", "k_proj", ..., "down_proj".
std::string_view linear_short_name(LinearKind kind);
/// The names of Model::named_tensors() for a model of `config` (no Linear packed), in that order.
std::vector<std::string> tensor_names(const ModelConfig& config);
/// The shape the configuration gives the tensor of a Hugging Face name (Model::named_tensors()'s
/// names; a Linear's is its ".weight"); empty for a name no model of it has.
std::vector<std::int64_t> expected_shape(const ModelConfig& config, const std::string& name);

/// The permutation that turns interleaved-RoPE rows (llama2.c, Meta) into rotate-half rows
/// (Hugging Face) for a (n_heads * head_dim, d_in) projection, and its inverse.
at::Tensor interleaved_to_rotate_half(const at::Tensor& w, int n_heads);
at::Tensor rotate_half_to_interleaved(const at::Tensor& w, int n_heads);

} // namespace pbllm
