#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pbllm {

/// A read-only memory map of a whole file (empty files map to size 0). Errors name the file. Its
/// pages are reclaimable page cache, so a model bigger than the free memory can be mapped and
/// read; tensors that view it must not be written (writable private mappings would count
/// against the kernel's commit limit, and a 70B file could not even be mapped).
class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const std::uint8_t* data() const { return data_; }
    std::size_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    const std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

} // namespace pbllm
