#include "core/system.h"

#include "core/cpu_allocator.h"
#include "core/error.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <QCryptographicHash>
#include <QFile>
#include <QSaveFile>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fcntl.h>
#include <dirent.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <malloc.h>
#include <mutex>
#include <thread>
#include <sys/statvfs.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#include <unordered_map>
#include <vector>
#ifdef PBLLM_SANITIZER_BUILD
#include <sanitizer/asan_interface.h>
#endif

namespace pbllm {

#ifdef PBLLM_SANITIZER_BUILD
namespace {

// Under AddressSanitizer, malloc is ASan's: it maps every block above 128 KiB afresh and unmaps
// it on free, and mallopt (below) has no effect. libtorch's temporaries then page-fault on every
// use and the unit suite ran 10-20x slower than without sanitizers. Sanitizer builds give libtorch
// a CPU allocator that keeps freed large blocks by exact size for reuse, which is what the raised
// mmap threshold does in normal builds. Every block is still an ASan allocation of its exact size,
// so overflows are caught, and a cached block stays poisoned until it is handed out again, so a
// use after free is caught too unless the block has been reused meanwhile.
class ReusingCpuAllocator final : public c10::Allocator {
public:
    c10::DataPtr allocate(std::size_t bytes) const override
    {
        if (bytes < kSmallest) {
            void* block = fresh(bytes);
            return {block, block, &release_small, c10::Device(c10::DeviceType::CPU)}; // deleters get the context
        }
        void* block = nullptr;
        {
            std::lock_guard<std::mutex> lock(state().mutex);
            std::vector<void*>& cached = state().free_by_size[bytes];
            if (!cached.empty()) {
                block = cached.back();
                cached.pop_back();
                state().cached_bytes -= bytes;
                ASAN_UNPOISON_MEMORY_REGION(block, bytes);
            }
        }
        if (!block)
            block = fresh(bytes);
        std::lock_guard<std::mutex> lock(state().mutex);
        state().size_of[block] = bytes;
        return {block, block, &release_large, c10::Device(c10::DeviceType::CPU)};
    }

private:
    static constexpr std::size_t kSmallest = 128 << 10; // ASan's own allocator reuses smaller blocks
    static constexpr std::size_t kCacheLimit = std::size_t(2) << 30;

    struct State {
        std::mutex mutex;
        std::unordered_map<std::size_t, std::vector<void*>> free_by_size;
        std::unordered_map<void*, std::size_t> size_of;
        std::size_t cached_bytes = 0;
    };
    static State& state()
    {
        static State* s = new State; // never destroyed: tensors outlive static destructors
        return *s;
    }
    static void* fresh(std::size_t bytes)
    {
        if (bytes == 0)
            return nullptr;
        void* p = nullptr;
        if (posix_memalign(&p, c10::gAlignment, bytes) != 0)
            throw std::bad_alloc();
        return p;
    }
    static void release_small(void* p) { std::free(p); }
    static void release_large(void* p)
    {
        std::unique_lock<std::mutex> lock(state().mutex);
        auto it = state().size_of.find(p);
        const std::size_t bytes = it->second;
        state().size_of.erase(it);
        if (state().cached_bytes + bytes > kCacheLimit) {
            lock.unlock();
            std::free(p);
            return;
        }
        ASAN_POISON_MEMORY_REGION(p, bytes);
        state().free_by_size[bytes].push_back(p);
        state().cached_bytes += bytes;
    }
};

[[maybe_unused]] const bool reusing_allocator_installed = [] {
    c10::SetCPUAllocator(new ReusingCpuAllocator, /*priority=*/1); // lives as long as the process
    return true;
}();

} // namespace
#endif

namespace {

/// The thread count configure_runtime chose: the ceiling adapt_threads_to_load works under.
std::atomic<int>& configured_threads()
{
    static std::atomic<int> threads{0};
    return threads;
}

} // namespace

int configured_thread_count()
{
    const int threads = configured_threads().load();
    return threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void return_free_heap_memory()
{
    malloc_trim(0);
}

int configure_runtime(int threads)
{
    // Tensors above glibc's default 128 KiB mmap threshold are mapped and unmapped on every
    // allocation (a page fault per 4 KiB each time). 32 MiB is the largest threshold glibc
    // accepts on 64-bit; hot loops keep their big temporaries below it.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, static_cast<int>(kHeapTrimThresholdBytes));
    // Past it, big tensors on huge pages (core/cpu_allocator.h): a 7B PB-GPTQ layer 1.28x faster.
    const char* huge = std::getenv("PBLLM_HUGE_PAGES");
    if (!huge || std::string(huge) != "0")
        install_huge_page_allocator();
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
    configured_threads().store(threads);
    return threads;
}

namespace {

/// Runnable tasks of the whole system (the running/total field of /proc/loadavg); -1 if unknown.
int runnable_tasks()
{
    std::ifstream in("/proc/loadavg");
    std::string a, b, c, running;
    if (!(in >> a >> b >> c >> running))
        return -1;
    return std::atoi(running.c_str());
}

/// This process's threads that are running or runnable now (state R in /proc/self/task/N/stat).
int own_runnable_tasks()
{
    int count = 0;
    if (DIR* dir = ::opendir("/proc/self/task")) {
        while (const dirent* entry = ::readdir(dir)) {
            if (entry->d_name[0] == '.')
                continue;
            std::ifstream stat(std::string("/proc/self/task/") + entry->d_name + "/stat");
            std::string line;
            std::getline(stat, line);
            const auto paren = line.rfind(')'); // the command name may hold spaces
            if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'R')
                ++count;
        }
        ::closedir(dir);
    }
    return count;
}

} // namespace

int threads_beside(int other_runnable_tasks, int cores, int configured)
{
    return std::clamp(cores - std::max(0, other_runnable_tasks), 1, std::max(1, configured));
}

void adapt_threads_to_load()
{
    const int configured = configured_threads().load();
    static const bool fixed = std::getenv("PBLLM_FIXED_THREADS") != nullptr; // for A/B benchmarks
    if (configured <= 1 || fixed)
        return;
    static std::mutex mutex;
    static std::chrono::steady_clock::time_point last{};
    std::unique_lock<std::mutex> lock(mutex, std::try_to_lock);
    const auto now = std::chrono::steady_clock::now();
    if (!lock.owns_lock() || now - last < std::chrono::milliseconds(500))
        return;
    last = now;
    // The fewest other runnable tasks over three looks a millisecond apart: a task that only
    // passes through the run queue (a shell, a page-in) should not take a thread away.
    int others = 1 << 20;
    for (int sample = 0; sample < 3 && others > 0; ++sample) {
        if (sample > 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        const int all = runnable_tasks();
        if (all < 0)
            return;
        others = std::min(others, std::max(0, all - own_runnable_tasks()));
    }
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int wanted = threads_beside(others, cores, configured);
    if (wanted != at::get_num_threads())
        at::set_num_threads(wanted);
}

void set_threads_here(int threads)
{
    at::init_num_threads(); // ATen's lazy per-thread set-up first, or its first use would undo this
#ifdef _OPENMP
    omp_set_num_threads(std::max(threads, 1)); // this thread's own; at::set_num_threads changes the default
#endif
}

namespace {

/// "key value" lines of a cgroup memory.stat file.
std::int64_t stat_value(const std::string& file, const std::string& wanted)
{
    std::ifstream in(file);
    std::string key;
    std::int64_t value = 0;
    while (in >> key >> value)
        if (key == wanted)
            return value;
    return -1;
}

std::int64_t read_number(const std::string& file)
{
    std::ifstream in(file);
    std::string text;
    if (!(in >> text) || text == "max")
        return -1;
    try {
        return std::stoll(text);
    } catch (const std::exception&) {
        return -1;
    }
}

/// What the process's memory cgroup still allows: its limit less its anonymous memory (file pages,
/// a mapped model's included, are reclaimable inside the limit). -1 when there is no limit.
std::int64_t cgroup_available_bytes()
{
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line)) {
        const auto first = line.find(':'), second = line.find(':', first + 1);
        if (first == std::string::npos || second == std::string::npos)
            continue;
        const std::string controllers = line.substr(first + 1, second - first - 1);
        const std::string path = line.substr(second + 1);
        if (controllers == "memory") { // cgroup v1: the limit of the whole hierarchy above too
            const std::string dir = "/sys/fs/cgroup/memory" + path;
            const std::int64_t limit = stat_value(dir + "/memory.stat", "hierarchical_memory_limit");
            const std::int64_t anon = stat_value(dir + "/memory.stat", "total_rss");
            if (limit > 0 && limit < (std::int64_t(1) << 60) && anon >= 0)
                return std::max<std::int64_t>(0, limit - anon);
            return -1;
        }
        if (controllers.empty() && first == 1 && line[0] == '0') { // cgroup v2: the tightest limit up the tree
            std::int64_t best = -1;
            for (std::string dir = "/sys/fs/cgroup" + path;; dir = dir.substr(0, dir.rfind('/'))) {
                const std::int64_t limit = read_number(dir + "/memory.max");
                const std::int64_t anon = stat_value(dir + "/memory.stat", "anon");
                if (limit > 0 && anon >= 0) {
                    const std::int64_t left = std::max<std::int64_t>(0, limit - anon);
                    best = best < 0 ? left : std::min(best, left);
                }
                if (dir.size() <= std::string("/sys/fs/cgroup").size())
                    break;
            }
            if (best >= 0)
                return best;
        }
    }
    return -1;
}

} // namespace

std::int64_t available_memory_bytes()
{
    std::int64_t available = -1;
    std::ifstream in("/proc/meminfo");
    std::string key;
    std::int64_t value = 0;
    std::string unit;
    while (in >> key >> value) {
        std::getline(in, unit);
        if (key == "MemAvailable:") {
            available = value * 1024;
            break;
        }
    }
    const std::int64_t cgroup = cgroup_available_bytes();
    if (cgroup >= 0)
        available = available < 0 ? cgroup : std::min(available, cgroup);
    return available;
}

namespace {

/// A "Key: N kB" line of /proc/self/status in bytes; -1 if absent.
std::int64_t proc_status_bytes(const std::string& wanted)
{
    std::ifstream in("/proc/self/status");
    std::string key;
    while (in >> key) {
        if (key == wanted) {
            std::int64_t kib = -1;
            in >> kib;
            return kib < 0 ? -1 : kib * 1024;
        }
        in.ignore(1 << 20, '\n');
    }
    return -1;
}

} // namespace

std::int64_t peak_resident_bytes() { return proc_status_bytes("VmHWM:"); }

std::int64_t current_resident_bytes() { return proc_status_bytes("VmRSS:"); }

std::int64_t current_anonymous_bytes()
{
    // With open/read into a stack buffer: no allocation and no lock, so a fork() (the HDF5
    // structure checks) taken while the sampler thread reads cannot inherit a held lock.
    const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[4096];
    std::size_t used = 0;
    for (ssize_t n; used + 1 < sizeof buf && (n = ::read(fd, buf + used, sizeof buf - 1 - used)) > 0;)
        used += static_cast<std::size_t>(n);
    ::close(fd);
    buf[used] = '\0';
    const char* line = std::strstr(buf, "\nRssAnon:");
    if (!line)
        return -1;
    const long long kib = std::strtoll(line + 10, nullptr, 10);
    return kib > 0 ? kib * 1024 : -1;
}

struct AnonymousPeakSampler::State {
    std::atomic<std::int64_t> peak{-1}, period_peak{-1};
    std::mutex mutex;
    std::condition_variable wake;
    bool stop = false;
    std::thread thread;

    void sample()
    {
        const std::int64_t now = current_anonymous_bytes();
        for (std::atomic<std::int64_t>* p : {&peak, &period_peak}) {
            std::int64_t seen = p->load();
            while (now > seen && !p->compare_exchange_weak(seen, now)) {
            }
        }
    }
};

AnonymousPeakSampler::AnonymousPeakSampler(int period_ms) : state_(std::make_unique<State>())
{
    state_->sample();
    State* st = state_.get();
    st->thread = std::thread([st, period_ms] {
        std::unique_lock<std::mutex> lock(st->mutex);
        while (!st->wake.wait_for(lock, std::chrono::milliseconds(period_ms), [st] { return st->stop; }))
            st->sample();
    });
}

AnonymousPeakSampler::~AnonymousPeakSampler()
{
    {
        std::lock_guard<std::mutex> lock(state_->mutex);
        state_->stop = true;
    }
    state_->wake.notify_one();
    state_->thread.join();
}

std::int64_t AnonymousPeakSampler::take_period_peak()
{
    state_->sample();
    return state_->period_peak.exchange(current_anonymous_bytes());
}

std::int64_t AnonymousPeakSampler::peak() const { return state_->peak.load(); }

void require_memory(std::int64_t bytes, const std::string& what)
{
    const std::int64_t available = available_memory_bytes();
    if (available > 0 && bytes > available)
        throw Error(what + " needs about " + human_bytes(bytes) + " of memory but only " + human_bytes(available) +
                    " is available");
}

void require_disk_space(const std::string& folder, std::int64_t bytes, const std::string& what)
{
    struct statvfs fs {};
    if (::statvfs(folder.c_str(), &fs) != 0)
        return;
    const std::int64_t free_bytes = static_cast<std::int64_t>(fs.f_bavail) * static_cast<std::int64_t>(fs.f_frsize);
    if (free_bytes < bytes + (std::int64_t(64) << 20))
        throw Error(what + " needs " + human_bytes(bytes) + " but the disk holding " + folder + " has " +
                    human_bytes(free_bytes) + " free");
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

std::string sampled_sha256_of_file(const std::string& path)
{
    QFile file(QString::fromStdString(path));
    if (!file.open(QIODevice::ReadOnly))
        throw Error(path + ": cannot open for hashing: " + file.errorString().toStdString());
    const qint64 size = file.size();
    constexpr qint64 kSample = 1 << 20, kSamples = 64;
    QCryptographicHash hash(QCryptographicHash::Sha256);
    hash.addData(QByteArray::number(size));
    if (size <= kSample * kSamples) {
        if (!hash.addData(&file))
            throw Error(path + ": read error while hashing");
    } else {
        for (qint64 i = 0; i < kSamples; ++i) {
            const qint64 offset = (size - kSample) / (kSamples - 1) * i;
            if (!file.seek(i == kSamples - 1 ? size - kSample : offset))
                throw Error(path + ": read error while hashing");
            const QByteArray chunk = file.read(kSample);
            if (chunk.size() != kSample)
                throw Error(path + ": read error while hashing");
            hash.addData(chunk);
        }
    }
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

void copy_file_atomically(const std::string& from, const std::string& to)
{
    std::ifstream in(from, std::ios::binary);
    if (!in)
        throw Error(from + ": cannot open for reading");
    AtomicFileWriter out(to);
    std::vector<char> buffer(std::size_t(64) << 20);
    while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        if (in.gcount() > 0)
            out.write(buffer.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad())
        throw Error(from + ": read error while copying it to " + to);
    out.commit();
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
