#include "core/hdf5_io.h"

#include "core/error.h"
#include "core/system.h"

#include <atomic>
#include <chrono>
#include <thread>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <csignal>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>
#ifdef PBLLM_SANITIZER_BUILD
#include <sanitizer/common_interface_defs.h>
#endif

namespace pbllm {

void quiet_hdf5()
{
    static const bool once = [] {
        // No library clean-up at exit: a file whose close failed (disk full, file size limit)
        // stays registered in HDF5 1.10, and closing it again from the exit handler crashes.
        H5dont_atexit();
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
        return true;
    }();
    (void)once;
}

Hid half_type()
{
    Hid t(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
    H5Tset_fields(t.get(), 15, 10, 5, 0, 10);
    H5Tset_precision(t.get(), 16);
    H5Tset_size(t.get(), 2);
    H5Tset_ebias(t.get(), 15);
    return t;
}

Hid create_memory_hdf5_file(const std::string& display_path)
{
    quiet_hdf5();
    static std::atomic<int> counter{0};
    Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_fapl_core(fapl.get(), 1 << 20, /*backing_store=*/false);
    // Version 0 superblock (H5Fget_file_image leaves a stale checksum in later ones); the groups
    // and headers still use the compact 1.8 forms, requested per object below.
    H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_EARLIEST, H5F_LIBVER_V18);
    const std::string name = "pbllm-memory-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    Hid file(H5Fcreate(name.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
    if (!file.ok())
        throw Error(display_path + ": HDF5 could not create the file in memory");
    return file;
}

void save_hdf5_image(hid_t file, const std::string& path)
{
    if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
        throw Error(path + ": HDF5 could not finish the file");
    const ssize_t size = H5Fget_file_image(file, nullptr, 0);
    if (size <= 0)
        throw Error(path + ": HDF5 could not produce the file image");
    std::vector<char> image(static_cast<std::size_t>(size));
    if (H5Fget_file_image(file, image.data(), image.size()) != size)
        throw Error(path + ": HDF5 could not produce the file image");
    AtomicFileWriter out(path);
    out.write(image.data(), image.size());
    out.commit();
}

StagedHdf5File::StagedHdf5File(std::string path, const std::string& staging_dir) : path_(std::move(path))
{
    quiet_hdf5();
    const std::string base = path_.substr(path_.find_last_of('/') + 1);
    temp_ = (staging_dir.empty() ? path_ : staging_dir + "/" + base) + ".tmp-" + std::to_string(::getpid());
    Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_EARLIEST, H5F_LIBVER_V18);
    Hid fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
    H5Pset_obj_track_times(fcpl.get(), false); // same content, same bytes
    errno = 0;
    file_ = Hid(H5Fcreate(temp_.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose);
    if (!file_.ok())
        throw Error(path_ + ": cannot write: " + std::strerror(errno ? errno : EIO));
}

StagedHdf5File::~StagedHdf5File()
{
    if (!temp_.empty()) {
        file_ = Hid();
        std::remove(temp_.c_str());
    }
}

void StagedHdf5File::commit()
{
    if (H5Fflush(file_.get(), H5F_SCOPE_GLOBAL) < 0)
        throw Error(path_ + ": HDF5 could not finish the file (disk full or file size limit?)");
    file_ = Hid(); // closes it
    const int fd = ::open(temp_.c_str(), O_RDONLY);
    const bool synced = fd >= 0 && ::fsync(fd) == 0;
    if (fd >= 0)
        ::close(fd);
    if (!synced || std::rename(temp_.c_str(), path_.c_str()) != 0)
        throw Error(path_ + ": could not complete the write: " + std::strerror(errno));
    temp_.clear();
    // The rename itself reaches the disk only with its folder.
    const std::size_t slash = path_.find_last_of('/');
    const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path_.substr(0, slash);
    const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
    if (dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

// ---- Writer ----------------------------------------------------------------------------------

void Writer::check(herr_t status, const std::string& what) const
{
    if (status < 0)
        throw Error(path_ + ": HDF5 could not write " + what + " (disk full or file size limit?)");
}

Hid Writer::group(hid_t parent, const std::string& name) const
{
    // Keep up to 32 attributes in the object header; past the default of 8 HDF5 moves them to
    // a B-tree and heap of their own (~2 KB per group).
    Hid gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
    H5Pset_attr_phase_change(gcpl.get(), 32, 16);
    H5Pset_link_phase_change(gcpl.get(), 64, 32);
    H5Pset_link_creation_order(gcpl.get(), H5P_CRT_ORDER_TRACKED); // forces the compact 1.8 group form
    H5Pset_obj_track_times(gcpl.get(), false); // same content, same bytes
    Hid g(H5Gcreate2(parent, name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), H5Gclose);
    if (!g.ok())
        throw Error(path_ + ": HDF5 could not create group " + name);
    return g;
}

void Writer::dataset(hid_t parent, const std::string& name, hid_t file_type, hid_t mem_type, std::vector<hsize_t> dims,
                     const void* data) const
{
    Hid space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    // Our datasets carry no attributes: reserve no header room for them, and no timestamps.
    Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_attr_phase_change(dcpl.get(), 0, 0);
    H5Pset_obj_track_times(dcpl.get(), false);
    H5Pset_dset_no_attrs_hint(dcpl.get(), true);
    Hid ds(H5Dcreate2(parent, name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok())
        throw Error(path_ + ": HDF5 could not create dataset " + name);
    hsize_t total = 1;
    for (hsize_t d : dims)
        total *= d;
    static const std::uint8_t dummy = 0;
    check(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, total ? data : &dummy), "dataset " + name);
}

void Writer::bytes(hid_t parent, const std::string& name, const std::vector<std::uint8_t>& v) const
{
    dataset(parent, name, H5T_STD_U8LE, H5T_NATIVE_UINT8, {v.size()}, v.data());
}

void Writer::halves(hid_t parent, const std::string& name, const std::vector<std::uint16_t>& v, std::vector<hsize_t> dims) const
{
    const Hid t = half_type();
    dataset(parent, name, t.get(), t.get(), std::move(dims), v.data());
}

void Writer::attr(hid_t obj, const std::string& name, const std::string& value) const
{
    Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), std::max<std::size_t>(1, value.size()));
    Hid space(H5Screate(H5S_SCALAR), H5Sclose);
    Hid a(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const std::string padded = value.empty() ? std::string(1, '\0') : value;
    check(a.ok() ? H5Awrite(a.get(), type.get(), padded.data()) : -1, "attribute " + name);
}

void Writer::attr(hid_t obj, const std::string& name, std::int64_t value) const
{
    Hid space(H5Screate(H5S_SCALAR), H5Sclose);
    Hid a(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    check(a.ok() ? H5Awrite(a.get(), H5T_NATIVE_INT64, &value) : -1, "attribute " + name);
}

void Writer::attr(hid_t obj, const std::string& name, double value) const
{
    Hid space(H5Screate(H5S_SCALAR), H5Sclose);
    Hid a(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    check(a.ok() ? H5Awrite(a.get(), H5T_NATIVE_DOUBLE, &value) : -1, "attribute " + name);
}

// ---- Parsing in a child process -----------------------------------------------------------

// libgomp (through libtorch) cannot run a parallel region in a forked child whose parent had
// a thread team: the child limits OpenMP to one thread, so every parallel_for runs inline.
extern "C" void omp_set_num_threads(int) __attribute__((weak));

void check_hdf5_structure(const std::string& path, const std::function<void()>& read)
{
    std::fflush(nullptr);
    const pid_t child = ::fork();
    if (child < 0)
        return; // cannot probe: the reader's own checks still apply
    if (child == 0) {
        // Default signal actions, so a crash reaches the parent as one; leave through _exit
        // (no destructors or atexit handlers of the parent's state).
        for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT})
            std::signal(sig, SIG_DFL);
        if (omp_set_num_threads)
            omp_set_num_threads(1);
#ifdef PBLLM_SANITIZER_BUILD
        // A sanitizer report here is a verdict on the file, not the process's own crash: no
        // death callback (libFuzzer's would record the input as a crash of the fuzzer).
        __sanitizer_set_death_callback(nullptr);
#endif
        try {
            read();
        } catch (...) {
            // An ordinary refusal: the parent's own read reports it. Any non-zero exit (a
            // sanitizer's report exits with 1) therefore means the library failed abnormally.
        }
        ::_exit(0);
    }
    // A child that hangs (a lock held by another thread at fork time) proves nothing about the
    // file: after a generous wait it is killed and the read goes ahead here.
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    for (;;) {
        const pid_t done = ::waitpid(child, &status, WNOHANG);
        if (done == child)
            break;
        if ((done < 0 && errno != EINTR) || std::chrono::steady_clock::now() > deadline) {
            ::kill(child, SIGKILL);
            ::waitpid(child, &status, 0);
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (WIFSIGNALED(status))
        throw Error(path + ": corrupt HDF5 file (the HDF5 library crashed parsing it: signal " +
                    std::to_string(WTERMSIG(status)) + ")");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) // e.g. a sanitizer's report
        throw Error(path + ": corrupt HDF5 file (parsing it failed abnormally)");
}

// ---- Reader ----------------------------------------------------------------------------------

void Reader::fail(const std::string& why) const { throw Error(path_ + ": " + why); }

bool Reader::exists(hid_t parent, const std::string& name) const
{
    return H5Lexists(parent, name.c_str(), H5P_DEFAULT) > 0;
}

bool Reader::has_attr(hid_t obj, const std::string& name) const { return H5Aexists(obj, name.c_str()) > 0; }

Hid Reader::group(hid_t parent, const std::string& name) const
{
    if (!exists(parent, name))
        fail("group '" + name + "' is missing");
    Hid g(H5Gopen2(parent, name.c_str(), H5P_DEFAULT), H5Gclose);
    if (!g.ok())
        fail("cannot open group '" + name + "'");
    return g;
}

std::vector<hsize_t> Reader::dims(hid_t ds, const std::string& name) const
{
    Hid space(H5Dget_space(ds), H5Sclose);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0 || rank > 4)
        fail("dataset '" + name + "' has an unreadable shape");
    std::vector<hsize_t> d(static_cast<std::size_t>(rank));
    H5Sget_simple_extent_dims(space.get(), d.data(), nullptr);
    return d;
}

void Reader::read_checked(hid_t parent, const std::string& name, hid_t mem_type, std::size_t element_size,
                          const std::vector<hsize_t>* expected, std::vector<hsize_t>* shape_out,
                          const std::function<void*(std::size_t bytes)>& destination) const
{
    if (!exists(parent, name))
        fail("dataset '" + name + "' is missing");
    Hid ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok())
        fail("cannot open dataset '" + name + "'");
    const std::vector<hsize_t> d = dims(ds.get(), name);
    if (expected && d != *expected) {
        std::string got, want;
        for (hsize_t x : d)
            got += (got.empty() ? "" : " x ") + std::to_string(x);
        for (hsize_t x : *expected)
            want += (want.empty() ? "" : " x ") + std::to_string(x);
        fail("dataset '" + name + "' has shape (" + got + "), expected (" + want + ")");
    }
    hsize_t total = 1;
    for (hsize_t x : d)
        total *= x;
    if (total > (hsize_t(1) << 36) / element_size)
        fail("dataset '" + name + "' is implausibly large");
    Hid ftype(H5Dget_type(ds.get()), H5Tclose);
    if (H5Tget_class(ftype.get()) != H5Tget_class(mem_type) || H5Tget_size(ftype.get()) != element_size)
        fail("dataset '" + name + "' has an unexpected element type");
    // The header's shape is a few bytes a corrupt file can set to anything; the data behind it must
    // be in the file, or a tiny file would have us allocate and fill gigabytes of fill value. A
    // filtered (compressed) dataset may expand: deflate's ratio is at most about 1032 to 1.
    const hsize_t declared = total * element_size;
    const hsize_t stored = H5Dget_storage_size(ds.get());
    Hid dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
    const hsize_t max_expansion = dcpl.ok() && H5Pget_nfilters(dcpl.get()) > 0 ? 1100 : 1;
    if (declared > 0 && declared / max_expansion > stored)
        fail("dataset '" + name + "' declares " + std::to_string(declared) + " bytes but the file holds " +
             std::to_string(stored) + " (truncated or corrupt file)");
    void* out = destination(static_cast<std::size_t>(total) * element_size);
    if (total > 0 && H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
        fail("cannot read dataset '" + name + "' (truncated or corrupt file)");
    if (shape_out)
        *shape_out = d;
}

std::vector<std::uint8_t> Reader::read_raw(hid_t parent, const std::string& name, hid_t mem_type, std::size_t element_size,
                                           const std::vector<hsize_t>* expected, std::vector<hsize_t>* shape_out) const
{
    std::vector<std::uint8_t> out;
    read_checked(parent, name, mem_type, element_size, expected, shape_out, [&](std::size_t bytes) {
        out.resize(bytes);
        return static_cast<void*>(out.data());
    });
    return out;
}

std::vector<std::uint8_t> Reader::bytes(hid_t parent, const std::string& name) const
{
    return read_raw(parent, name, H5T_NATIVE_UINT8, 1, nullptr);
}

std::vector<std::uint16_t> Reader::halves(hid_t parent, const std::string& name, const std::vector<hsize_t>& shape) const
{
    const Hid t = half_type();
    std::vector<std::uint16_t> out;
    read_checked(parent, name, t.get(), 2, &shape, nullptr, [&](std::size_t bytes) {
        out.resize(bytes / 2);
        return static_cast<void*>(out.data());
    });
    return out;
}

void Reader::halves_into(hid_t parent, const std::string& name, const std::vector<hsize_t>& shape,
                         const std::function<std::uint16_t*()>& allocate) const
{
    const Hid t = half_type();
    read_checked(parent, name, t.get(), 2, &shape, nullptr, [&](std::size_t) { return static_cast<void*>(allocate()); });
}

std::string Reader::attr_string(hid_t obj, const std::string& name) const
{
    if (H5Aexists(obj, name.c_str()) <= 0)
        fail("attribute '" + name + "' is missing");
    Hid a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
    Hid type(H5Aget_type(a.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
        fail("attribute '" + name + "' is not a fixed-length string");
    const std::size_t size = H5Tget_size(type.get());
    if (size > (64u << 20))
        fail("attribute '" + name + "' is implausibly large");
    std::string s(size, '\0');
    Hid mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), size);
    if (H5Aread(a.get(), mem.get(), s.data()) < 0)
        fail("cannot read attribute '" + name + "'");
    while (!s.empty() && s.back() == '\0')
        s.pop_back();
    return s;
}

std::int64_t Reader::attr_int(hid_t obj, const std::string& name) const
{
    if (H5Aexists(obj, name.c_str()) <= 0)
        fail("attribute '" + name + "' is missing");
    Hid a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
    Hid type(H5Aget_type(a.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_INTEGER)
        fail("attribute '" + name + "' is not an integer");
    std::int64_t v = 0;
    if (H5Aread(a.get(), H5T_NATIVE_INT64, &v) < 0)
        fail("cannot read attribute '" + name + "'");
    return v;
}

double Reader::attr_double(hid_t obj, const std::string& name) const
{
    if (H5Aexists(obj, name.c_str()) <= 0)
        fail("attribute '" + name + "' is missing");
    Hid a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
    Hid type(H5Aget_type(a.get()), H5Tclose);
    if (H5Tget_class(type.get()) != H5T_FLOAT)
        fail("attribute '" + name + "' is not a number");
    double v = 0;
    if (H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v) < 0)
        fail("cannot read attribute '" + name + "'");
    return v;
}

} // namespace pbllm
