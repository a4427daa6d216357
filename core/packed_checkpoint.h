#pragma once
// The packed checkpoint (.pbllm.h5): real PB-LLM storage. Layout (README, "Packed checkpoint"):
//   /                 attributes: format, format_version, program_version, model_config (JSON),
//                     plan (JSON), source_sha256, calibration_sha256, created
//   /tokenizer        uint8: the serialized SentencePiece model (the file is self-contained)
//   /tensors/<name>   FP16: full-precision tensors (embedding, norms, head, skipped Linears)
//   /linear/<name>/   one group per quantized Linear: index, codes, signs, grid_scale,
//                     grid_zero, mu, alpha (+ attributes)
#include "core/bitpack.h"
#include "core/gptq.h"
#include "core/ptq.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pbllm {

/// A QuantizedLinear as the bytes the file stores.
struct PackedLinear {
    std::string name;
    std::int64_t rows = 0, cols = 0;
    QuantMethod method = QuantMethod::PbGptq;
    Binarizer binarizer = Binarizer::Xnor;
    int grid_bits = 8;            ///< bits per salient code (16 = FP16 values)
    int groupsize = 0;
    double salient_ratio_requested = 0.0;
    std::int64_t salient_count = 0;
    EncodedIndex index;           ///< positions of salient weights (row-major)
    std::vector<std::uint8_t> codes; ///< grid_bits per salient weight, row-major order, LSB first
    std::vector<std::uint8_t> signs; ///< one bit per non-salient weight, row-major order (1 = +1)
    std::int64_t grid_groups = 0, stat_groups = 0;
    std::vector<std::uint16_t> grid_scale; ///< FP16 bits (rows, grid_groups)
    std::vector<std::uint8_t> grid_zero;   ///< (rows, grid_groups)
    std::vector<std::uint16_t> mu, alpha;  ///< FP16 bits (rows, stat_groups)
    // Block binarizers (billm): `signs` holds one bit per weight (the first-order sign), `index`,
    // `codes`, the grid and mu/alpha stay empty; salient_count = rows x salient columns.
    int block = 0;                            ///< columns per block
    std::vector<std::uint8_t> column_bitmap;  ///< one bit per column, 1 = salient
    std::vector<std::uint8_t> group_bitmap;   ///< one bit per non-salient weight (every weight under CGB), row-major, 1 = sparse
    std::vector<std::uint8_t> signs2;         ///< one bit per salient weight, row-major (second order)
    std::vector<std::uint16_t> block_params;  ///< FP16 bits (rows, blocks, layout.row_params())
    std::vector<std::uint16_t> column_params; ///< FP16 bits, per column its layout.column_params() (ARB-RC)
    BlockBinaryLayout block_layout;           ///< what the block-binary arrays hold
    /// log8 scales (ARB-RC): the row scales' codes then the column scales' (in block_params' and
    /// column_params' order, which stay empty), and per block the row and the column base.
    std::vector<std::uint8_t> scale_codes;
    std::vector<float> scale_bases;

    std::int64_t weights() const { return rows * cols; }
    /// Bytes locating the salient weights: the sparse index, or a block binarizer's two bitmaps.
    std::int64_t index_bytes() const
    {
        return static_cast<std::int64_t>(index.bytes.size() + column_bitmap.size() + group_bitmap.size());
    }
    /// Bytes of every array above: the honest storage of this Linear.
    std::int64_t bytes() const;
};

PackedLinear pack_linear(const QuantizedLinear& q);
/// Checks the shape, bit-width, counts and array sizes of a PackedLinear against each other
/// (not the values: unpack_linear and build_packed_weights check those as they decode).
void validate_packed_fields(const PackedLinear& p, const std::string& what);
/// Validates every field (sizes, counts, code ranges, index bounds) and rebuilds the Linear,
/// `dequantized` included. Error messages name `what` (file and Linear).
QuantizedLinear unpack_linear(const PackedLinear& p, const std::string& what);

/// What bit accounting needs of a PackedLinear (kept when its arrays are gone).
struct LinearBits {
    std::int64_t weights = 0, salient_count = 0, index_bytes = 0, bytes = 0;
    int grid_bits = 8;
    QuantMethod method = QuantMethod::PbGptq;
};
LinearBits linear_bits(const PackedLinear& linear);

/// Average bits per quantized weight in the four conventions of METHOD.md section 6.
struct BitsPerWeight {
    double headline = 0.0;    ///< b*r + (1 - r)
    double with_bitmap = 0.0; ///< headline + 1 (the paper's Eq. 3 bound)
    double with_index = 0.0;  ///< headline + the stored sparse index
    double measured = 0.0;    ///< all stored bytes of the quantized Linears (scales, means, index...) * 8 / n
};
BitsPerWeight bits_per_weight(const std::vector<LinearBits>& linears);
BitsPerWeight bits_per_weight(const std::vector<PackedLinear>& linears);

/// What the root of a packed checkpoint records besides its tensors.
struct PackedHeader {
    ModelConfig config;
    QuantPlan plan;
    std::string source_sha256;
    std::string calibration_sha256;
    std::string tokenizer_bytes;
    std::string training_json;
    std::string created; ///< ISO 8601 UTC; "" = packed_creation_time()
};
/// Now in ISO 8601 UTC, or SOURCE_DATE_EPOCH when set (the reproducible-builds convention: two
/// runs of the same job then write identical bytes).
std::string packed_creation_time();
PackedHeader packed_header(const QuantizedModel& model);

/// Writes a packed checkpoint piece by piece, straight to a temporary file beside `path` that
/// commit() renames over it: a model far larger than memory is written holding one tensor at a
/// time, a failure leaves no partial file and an existing one intact. Errors name the file.
class PackedCheckpointWriter {
public:
    /// `staging_dir`: where the temporary goes (same file system), default beside `path`.
    PackedCheckpointWriter(const std::string& path, const PackedHeader& header, const std::string& staging_dir = "");
    ~PackedCheckpointWriter(); ///< removes the temporary unless committed
    /// A full-precision tensor (embedding, norm, skipped Linear, head), stored as FP16.
    void add_tensor(const std::string& name, const at::Tensor& tensor);
    void add_linear(const PackedLinear& linear);
    void commit();

private:
    struct Parts;
    std::unique_ptr<Parts> parts_;
};

/// Writes `model` to `path` atomically (temporary file renamed on success; an existing file
/// stays intact on failure). Throws Error naming the file and the reason.
void write_packed_checkpoint(const QuantizedModel& model, const std::string& path);

/// How a packed checkpoint's quantized Linears are loaded.
enum class PackedLoad {
    Dequantized, ///< float32 tensors (quantized.linears and packed filled): what every tool can use
    Runtime,     ///< kept packed for the packed kernels (DecoderLayer::packed), FP16 full-precision
                 ///< tensors; quantized.linears and packed stay empty
};

/// What a packed checkpoint holds, with the model rebuilt from it (CPU).
struct PackedCheckpoint {
    QuantizedModel quantized;
    std::vector<PackedLinear> packed;
    std::vector<LinearBits> bits; ///< every quantized Linear, in both load modes
    std::string program_version;
    std::string created;
    std::int64_t file_bytes = 0;
};

/// Reads and validates a .pbllm.h5 file; Error names the file and what is wrong.
PackedCheckpoint read_packed_checkpoint(const std::string& path, PackedLoad load = PackedLoad::Dequantized);

/// True when the file starts with the HDF5 signature.
bool has_hdf5_signature(const std::string& path);

} // namespace pbllm
