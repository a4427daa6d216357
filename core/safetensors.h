#pragma once
// The safetensors container: an 8-byte little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets}, then the raw little-endian data.
#include "core/mapped_file.h"
#include "core/model.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pbllm {

struct SafetensorsEntry {
    std::string dtype; ///< "F32", "F16", "BF16", ...
    std::vector<std::int64_t> shape;
    std::int64_t begin = 0; ///< byte offsets into the data section
    std::int64_t end = 0;
};

/// A validated, memory-mapped safetensors file. Construction checks the header completely
/// (JSON form, dtypes, shapes against byte ranges, bounds, overlaps) and names the file in errors.
class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::string& path);

    const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    bool contains(const std::string& name) const { return entries_.count(name) != 0; }
    /// A CPU copy of tensor `name` in its stored dtype; throws Error if absent or unsupported.
    at::Tensor read(const std::string& name) const;
    /// Tensor `name` in its stored dtype without copying: a read-only view of the mapped file
    /// that keeps the mapping alive (a copy only when the data is not aligned for its element
    /// type). Writing into it crashes: copy first.
    at::Tensor view(const std::string& name) const;
    const std::string& path() const { return file_->path(); }

private:
    const SafetensorsEntry& entry(const std::string& name) const;

    std::shared_ptr<MappedFile> file_;
    std::int64_t data_start_ = 0;
    std::map<std::string, SafetensorsEntry> entries_;
    std::map<std::string, std::string> metadata_;
};

/// A tensor's name, dtype and shape: what a safetensors header records.
struct TensorSpec {
    std::string name;
    at::ScalarType dtype;
    std::vector<std::int64_t> shape;
};

/// The bytes before the data: the 8-byte header length and the JSON header (padded to 8 bytes)
/// for tensors stored back to back in the given order. Lets a writer stream tensors it makes
/// one at a time.
std::string safetensors_header(const std::vector<TensorSpec>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

/// Writes tensors (in the given order, each in its own dtype) atomically.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// "F32" <-> at::kFloat and friends; throws Error for dtypes the studio does not read.
at::ScalarType scalar_type_from_safetensors(const std::string& dtype, const std::string& context);
std::string safetensors_dtype(at::ScalarType type);

} // namespace pbllm
