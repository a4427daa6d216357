#pragma once
// Packed PB-LLM Linears in memory and the kernels that multiply by them without dequantizing.
//
// A row i of a partially binarized Linear holds, per parameter group g (a run of whole column
// blocks: the binarization-statistics group, or the grid group of plain GPTQ), non-salient
// weights mu + alpha (sign bit 1) or mu - alpha (sign bit 0) and salient weights s (q - z)
// (or an FP16 value when the salient bit-width is 16). With b the sign plane (0 at salient
// positions), S the salient set and X_g the sum of x over the group:
//   y_i = sum_g (mu - alpha) (X_g - sum_S x) + 2 alpha sum_j b_ij x_j + s sum_S q x - s z sum_S x
// The dense part is a 1-bit dot product over every column; the sparse part touches the salient
// columns only (../shared/docs/PACKED-INFERENCE.md).
#include <cstdint>
#include <vector>

namespace pbllm::kernels {

/// Columns per block: the sign plane is padded to whole blocks, parameter groups are whole
/// blocks, and int8 activations carry one scale per block.
constexpr int kPackedBlock = 128;

/// Zero entries after the last salient entry, so that vector kernels may read a whole step (up
/// to 32 entries) past a row's last without a bounds check.
constexpr int kPackedEntryPadding = 32;

/// The runtime layout of one quantized Linear (rows, cols). Built and validated from a packed
/// file by build_packed_weights (core/packed_runtime.h); the kernels trust it.
struct PackedWeights {
    std::int64_t rows = 0, cols = 0;
    std::int64_t blocks = 0;       ///< ceil(cols / kPackedBlock)
    std::int64_t groups = 1;       ///< parameter groups per row
    std::int64_t group_blocks = 0; ///< blocks per parameter group (the last group may have fewer)
    int code_bits = 8;             ///< 2..8: u8 grid codes; 16: FP16 values
    bool binarized = true;         ///< false for plain GPTQ (every weight salient, mu = alpha = 0)
    std::int64_t salient = 0;      ///< salient weights (entries)

    /// Sign plane, (rows, blocks * kPackedBlock / 32) words; bit j of word w is column 32 w + j;
    /// 1 = non-salient +1, 0 = non-salient -1, salient, or padding past cols.
    std::vector<std::uint32_t> signs;
    /// Per (row, group), as the file stores them: FP16 bits of mu, alpha and the grid scale
    /// (1.0 for FP16 values), and the grid zero point.
    std::vector<std::uint16_t> mu, alpha, scale;
    std::vector<std::uint8_t> zero;
    /// Salient entries, row-major in column order: row r owns [row_start[r], row_start[r + 1]),
    /// block b of row r the next block_count[r * blocks + b] of them, each holding its column
    /// within the block (0..127). A kernel reads a block's entries as a batch of indices into the
    /// block's 128 activations, with no chain from one entry to the next.
    std::vector<std::uint32_t> row_start;
    std::vector<std::uint8_t> block_count;
    std::vector<std::uint8_t> offsets;
    std::vector<std::uint8_t> codes;     ///< grid codes (code_bits <= 8), per entry
    std::vector<std::uint16_t> values16; ///< FP16 values (code_bits == 16), per entry
    /// offsets, and codes or values16, hold kPackedEntryPadding zero entries past the last.

    std::int64_t words_per_row() const { return blocks * (kPackedBlock / 32); }
    std::int64_t padded_cols() const { return blocks * kPackedBlock; }
    std::int64_t group_cols() const { return group_blocks * kPackedBlock; }
    std::int64_t salient_count() const { return salient; }
    /// Bytes of every array above: what the Linear costs in memory.
    std::int64_t resident_bytes() const;
};

/// How the dense 1-bit part reads the activations.
enum class PackedActivations {
    Float32, ///< exact: float sums of x over the set sign bits
    Int8,    ///< the dense part reads x rounded to int8 with one scale per 128-column block
             ///< (max |x| / 127); salient grid codes read x rounded to int16 with one scale for the
             ///< vector (max |x| / 32767, a 100x finer step); FP16 salient values and the sums of
             ///< x per group stay float32. Both are summed with integer SIMD.
};

/// The activation vector as the kernels read it: x zero-padded to whole blocks, its sum per
/// parameter group (shared by every row), and for Int8 its rounded copies and their scales.
struct PackedInput {
    PackedActivations precision = PackedActivations::Float32;
    std::vector<float> x;
    std::vector<float> group_sums;
    std::vector<std::int8_t> x_int8;
    std::vector<float> block_scale;
    /// x rounded to int16, padded to whole blocks plus kInt16Padding zeros (a kernel may read a
    /// 32-bit word at any column), and the one scale of them all.
    std::vector<std::int16_t> x_int16;
    float int16_scale = 0.0f;
};
constexpr int kInt16Padding = 2;
/// Fills `input` for W from x, in input.precision.
void prepare_packed_input(const PackedWeights& W, const float* x, PackedInput& input);
/// x (blocks * kPackedBlock floats) to int8 with one scale per block, max |x| / 127, rounded to
/// nearest even: the scalar definition of the int8 activations.
void quantize_blocks_int8_reference(const float* x, std::int64_t blocks, std::int8_t* out, float* scale);
/// x (n floats) to int16 with one scale, max |x| / 32767, rounded to nearest even; returns the
/// scale: the scalar definition of the salient entries' int16 activations.
float quantize_int16_reference(const float* x, std::int64_t n, std::int16_t* out);

/// The implementations of packed_matvec_rows. The fast ones need the CPU features named and run
/// Linears with one parameter group per row; for others the reference runs.
enum class PackedKernel {
    Reference, ///< the scalar definition
    Avx2,      ///< AVX2 + FMA + F16C
    Avx512,    ///< AVX-512 F/BW/VL/VNNI: mask registers select x by the sign bits as stored
};
/// The kernels this CPU can run, the reference first, the fastest last.
std::vector<PackedKernel> available_packed_kernels();
/// "reference", "avx2-fma-f16c" or "avx512-vnni".
const char* packed_kernel_name(PackedKernel kernel);
/// What packed_matvec_rows runs: the fastest available, or the one PBLLM_PACKED_KERNEL names
/// (reference, avx2, avx512) if this CPU has it, to compare them end to end.
PackedKernel preferred_packed_kernel();
const char* packed_kernel_name();

/// y[r] = W[r, :] . x for rows [begin, end) with `kernel` (which this CPU must have).
void packed_matvec_rows(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin, std::int64_t end,
                        PackedKernel kernel);
/// The same with preferred_packed_kernel().
void packed_matvec_rows(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin, std::int64_t end);
/// The scalar definition of the above (float accumulation per group, in column order; for Int8
/// inputs, exact integer sums per block times the block's scale for the dense part, and float
/// sums of q times the int16 x over each group times the int16 scale for grid codes).
void packed_matvec_rows_reference(const PackedWeights& W, const PackedInput& x, float* y, std::int64_t begin,
                                  std::int64_t end);

/// Rows [begin, end) of the dequantized matrix into out (row-major, cols floats a row): the
/// values QuantizedLinear::dequantize computes, bit for bit. The batched product unpacks a tile
/// of rows once and multiplies it with every token.
void packed_dequantize_rows(const PackedWeights& W, float* out, std::int64_t begin, std::int64_t end);

/// Rows ahead of the one being multiplied whose bytes the kernels ask the memory system for:
/// about 3 KiB ahead. The hardware prefetchers do not keep up with a row's four arrays on their
/// own: from memory the kernels ran 1.2-1.7x slower than from cache without this.
std::int64_t packed_prefetch_rows(const PackedWeights& W);
/// Asks for every cache line of row r's sign words, salient entries and block counts (no-op
/// for r outside the matrix).
void prefetch_packed_row(const PackedWeights& W, std::int64_t r);

/// Cost of rows [0, r) in the matvec's unit of work (dense words + salient entries), for
/// splitting rows between threads evenly when salient counts differ by row.
double packed_row_cost(const PackedWeights& W, std::int64_t r);

} // namespace pbllm::kernels
