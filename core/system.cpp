#include "core/system.h"

#include "core/error.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <QCryptographicHash>
#include <QFile>
#include <QSaveFile>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <malloc.h>
#include <thread>
#include <unistd.h>

namespace pbllm {

int configure_runtime(int threads)
{
    // Tensors above glibc's default 128 KiB mmap threshold are mapped and unmapped on every
    // allocation (a page fault per 4 KiB each time). 32 MiB is the largest threshold glibc
    // accepts on 64-bit; hot loops keep their big temporaries below it.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    // Past a file-size limit (RLIMIT_FSIZE) a write should fail with EFBIG and a message, not
    // kill the process with SIGXFSZ.
    std::signal(SIGXFSZ, SIG_IGN);
    if (threads <= 0) {
        if (const char* omp = std::getenv("OMP_NUM_THREADS"))
            threads = std::atoi(omp);
    }
    if (threads <= 0)
        threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(threads);
    return threads;
}

std::int64_t available_memory_bytes()
{
    std::ifstream in("/proc/meminfo");
    std::string key;
    std::int64_t value = 0;
    std::string unit;
    while (in >> key >> value) {
        std::getline(in, unit);
        if (key == "MemAvailable:")
            return value * 1024;
    }
    return -1;
}

void require_memory(std::int64_t bytes, const std::string& what)
{
    const std::int64_t available = available_memory_bytes();
    if (available > 0 && bytes > available)
        throw Error(what + " needs about " + human_bytes(bytes) + " of memory but only " + human_bytes(available) +
                    " is available");
}

std::string executable_dir()
{
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0)
        return {};
    std::string path(buf, static_cast<std::size_t>(n));
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

std::string sha256_of_file(const std::string& path)
{
    QFile file(QString::fromStdString(path));
    if (!file.open(QIODevice::ReadOnly))
        throw Error(path + ": cannot open for hashing: " + file.errorString().toStdString());
    QCryptographicHash hash(QCryptographicHash::Sha256);
    if (!hash.addData(&file))
        throw Error(path + ": read error while hashing");
    return hash.result().toHex().toStdString();
}

std::string sha256_of_bytes(const std::string& bytes)
{
    return QCryptographicHash::hash(QByteArrayView(bytes.data(), static_cast<qsizetype>(bytes.size())),
                                    QCryptographicHash::Sha256)
        .toHex()
        .toStdString();
}

std::string read_file_bytes(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw Error(path + ": cannot open");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad())
        throw Error(path + ": read error");
    return bytes;
}

struct AtomicFileWriter::Impl {
    explicit Impl(const std::string& p) : file(QString::fromStdString(p)), path(p) {}
    QSaveFile file;
    std::string path;
};

AtomicFileWriter::AtomicFileWriter(const std::string& path) : impl_(new Impl(path))
{
    if (!impl_->file.open(QIODevice::WriteOnly)) {
        const std::string why = impl_->file.errorString().toStdString();
        delete impl_;
        throw Error(path + ": cannot write: " + why);
    }
}

AtomicFileWriter::~AtomicFileWriter()
{
    if (impl_->file.isOpen())
        impl_->file.cancelWriting();
    delete impl_;
}

void AtomicFileWriter::write(const void* data, std::size_t size)
{
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
        const qint64 chunk = static_cast<qint64>(std::min<std::size_t>(size, std::size_t(1) << 30));
        const qint64 written = impl_->file.write(p, chunk);
        if (written != chunk) {
            const std::string why = impl_->file.errorString().toStdString();
            impl_->file.cancelWriting();
            throw Error(impl_->path + ": write failed: " + why);
        }
        p += chunk;
        size -= static_cast<std::size_t>(chunk);
    }
}

void AtomicFileWriter::commit()
{
    if (!impl_->file.commit())
        throw Error(impl_->path + ": could not complete the write: " + impl_->file.errorString().toStdString());
}

void write_file_atomically(const std::string& path, const std::string& bytes)
{
    AtomicFileWriter writer(path);
    writer.write(bytes.data(), bytes.size());
    writer.commit();
}

std::string human_bytes(std::int64_t bytes)
{
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
    return buf;
}

bool cuda_available() { return at::hasCUDA(); }

} // namespace pbllm
