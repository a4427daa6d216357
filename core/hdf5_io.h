#pragma once
// Small RAII and validation helpers over the HDF5 C API, shared by the packed checkpoint and the
// calibration file. Internal to core.
#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pbllm {

/// Owns an HDF5 identifier.
class Hid {
public:
    using Closer = herr_t (*)(hid_t);
    Hid() = default;
    Hid(hid_t id, Closer closer) : id_(id), closer_(closer) {}
    Hid(Hid&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = -1; }
    Hid& operator=(Hid&& o) noexcept
    {
        std::swap(id_, o.id_);
        std::swap(closer_, o.closer_);
        return *this;
    }
    Hid(const Hid&) = delete;
    ~Hid()
    {
        if (id_ >= 0 && closer_)
            closer_(id_);
    }
    hid_t get() const { return id_; }
    bool ok() const { return id_ >= 0; }

private:
    hid_t id_ = -1;
    Closer closer_ = nullptr;
};

/// Turns off HDF5's own error printing (we report our own messages).
void quiet_hdf5();
/// IEEE half precision as an HDF5 type (HDF5 1.10 predefines none; h5py reads it as float16).
Hid half_type();

/// An HDF5 file built in memory (core driver, no backing store) with the 1.8+ object format
/// (small groups keep their links in the object header instead of a B-tree and heap). HDF5 never
/// writes to disk itself: save() hands the finished image to AtomicFileWriter, so a failed write
/// (disk full, file size limit) leaves no partial file and an existing one intact.
Hid create_memory_hdf5_file(const std::string& display_path);
void save_hdf5_image(hid_t file, const std::string& path);

/// An HDF5 file written straight to a temporary beside `path`, in the same compact format as
/// create_memory_hdf5_file, and renamed over `path` by commit(): memory stays small however big
/// the file (a 7B model's packed file is ~2 GB), and a failure (disk full, file size limit)
/// leaves no partial file and an existing one intact. Destroying it uncommitted removes the
/// temporary.
class StagedHdf5File {
public:
    /// The temporary goes in `staging_dir` (same file system as `path`) when given, else beside.
    explicit StagedHdf5File(std::string path, const std::string& staging_dir = "");
    ~StagedHdf5File();
    StagedHdf5File(const StagedHdf5File&) = delete;
    StagedHdf5File& operator=(const StagedHdf5File&) = delete;
    hid_t get() const { return file_.get(); }
    /// Closes the file, flushes it to disk, renames it over the path and flushes the folder.
    void commit();

private:
    std::string path_, temp_;
    Hid file_;
};

/// Writing with errors that name the file.
class Writer {
public:
    explicit Writer(std::string path) : path_(std::move(path)) {}
    void check(herr_t status, const std::string& what) const;
    Hid group(hid_t parent, const std::string& name) const;
    void dataset(hid_t parent, const std::string& name, hid_t file_type, hid_t mem_type, std::vector<hsize_t> dims,
                 const void* data) const;
    void bytes(hid_t parent, const std::string& name, const std::vector<std::uint8_t>& v) const;
    void halves(hid_t parent, const std::string& name, const std::vector<std::uint16_t>& v, std::vector<hsize_t> dims) const;
    void attr(hid_t obj, const std::string& name, const std::string& value) const;
    void attr(hid_t obj, const std::string& name, std::int64_t value) const;
    void attr(hid_t obj, const std::string& name, double value) const;

private:
    std::string path_;
};

/// Reading with validation (shapes, element types, sizes bounded before allocation).
/// Runs `read` (a full read of `path`, results discarded) in a forked child process first and
/// throws Error when it crashes there. HDF5 1.10 has parser bugs that corrupt files reach (found
/// by fuzzing: a NULL memcpy under H5Lexists on a broken B-tree v2 header), and a reader must
/// refuse such a file, not take the program down. A file the reader merely rejects passes here,
/// and the real read in this process then says why. Costs one extra read of the file.
void check_hdf5_structure(const std::string& path, const std::function<void()>& read);

class Reader {
public:
    explicit Reader(std::string path) : path_(std::move(path)) {}
    [[noreturn]] void fail(const std::string& why) const;
    bool exists(hid_t parent, const std::string& name) const;
    bool has_attr(hid_t obj, const std::string& name) const;
    Hid group(hid_t parent, const std::string& name) const;
    std::vector<hsize_t> dims(hid_t ds, const std::string& name) const;
    std::vector<std::uint8_t> read_raw(hid_t parent, const std::string& name, hid_t mem_type, std::size_t element_size,
                                       const std::vector<hsize_t>* expected, std::vector<hsize_t>* shape_out = nullptr) const;
    std::vector<std::uint8_t> bytes(hid_t parent, const std::string& name) const;
    std::vector<std::uint16_t> halves(hid_t parent, const std::string& name, const std::vector<hsize_t>& shape) const;
    /// FP16 dataset of exactly `shape` read straight into the memory `allocate` returns, called
    /// once the dataset is checked (so a corrupt shape allocates nothing): a big tensor is read
    /// once, with no staging copy beside it.
    void halves_into(hid_t parent, const std::string& name, const std::vector<hsize_t>& shape,
                     const std::function<std::uint16_t*()>& allocate) const;
    std::string attr_string(hid_t obj, const std::string& name) const;
    std::int64_t attr_int(hid_t obj, const std::string& name) const;
    double attr_double(hid_t obj, const std::string& name) const;

private:
    /// read_raw's checks, then the data into the memory `destination` returns for the byte count.
    void read_checked(hid_t parent, const std::string& name, hid_t mem_type, std::size_t element_size,
                      const std::vector<hsize_t>* expected, std::vector<hsize_t>* shape_out,
                      const std::function<void*(std::size_t bytes)>& destination) const;
    std::string path_;
};

} // namespace pbllm
