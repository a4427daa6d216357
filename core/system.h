#pragma once
// Process-wide set-up and small facts about the machine and files.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace pbllm {

/// Sets libtorch's intra-op threads (threads <= 0: OMP_NUM_THREADS if set, else all hardware
/// threads), raises glibc's mmap/trim thresholds and puts big tensors on huge pages
/// (core/cpu_allocator.h; PBLLM_HUGE_PAGES=0 in the environment keeps libtorch's allocator) so
/// hot loops do not page-fault on every big tensor allocation. Call once at start-up; returns the
/// thread count in use.
int configure_runtime(int threads = 0);

/// Matches libtorch's (and OpenMP OpenBLAS's) thread count to the CPUs that other processes
/// leave free, never above what configure_runtime set. An OpenMP parallel region ends only when
/// every one of its threads has run, so on a machine shared with busy processes each region
/// waits for a descheduled thread: evaluating stories260K on 2 cores beside one busy process ran
/// 5.3x slower with 2 threads. Long jobs call this between parallel regions; it looks at the
/// system (runnable tasks other than this process's, from /proc) at most every 0.5 s, so calling
/// it often is cheap. Affects parallel regions started by the calling thread. Only evaluation and
/// generation adapt: quantization and QAT write files that must be identical run to run, and a
/// reduction split over another number of threads rounds differently. PBLLM_FIXED_THREADS in the
/// environment turns it off.
void adapt_threads_to_load();
/// Sets how many threads the parallel regions the calling thread starts use (other threads
/// keep theirs), for background work beside interactive work in one process: on 2 cores, three
/// threads each starting 2-thread regions made a studio slider move wait seconds on OpenMP
/// barriers.
void set_threads_here(int threads);
/// The thread count configure_runtime chose (the hardware threads before it is called).
int configured_thread_count();
/// The rule adapt_threads_to_load applies: the cores other runnable tasks leave, at least one,
/// at most `configured`.
int threads_beside(int other_runnable_tasks, int cores, int configured);

/// Free heap memory glibc may keep at the top of the heap before returning it to the system
/// (M_TRIM_THRESHOLD, set by configure_runtime): memory plans count it as held.
constexpr std::int64_t kHeapTrimThresholdBytes = std::int64_t(256) << 20;
/// Gives the free heap memory glibc keeps (up to the threshold above, and whole free pages
/// between live blocks) back to the system: for a loader that builds big structures out of big
/// temporaries, so that what it keeps is all it holds.
void return_free_heap_memory();
/// What memory plans count for the runtime itself: libtorch and OpenMP threads (130 MiB
/// measured quantizing stories260K, rounded up) and the free heap glibc may keep.
constexpr std::int64_t kRuntimeReserveBytes = (std::int64_t(160) << 20) + kHeapTrimThresholdBytes;

/// Bytes that can be allocated without swapping or being killed: MemAvailable, or less when the
/// process's memory cgroup (a container, ../shared/tools/memcap.sh) allows less; -1 if unknown.
std::int64_t available_memory_bytes();

/// The most resident memory this process has had (VmHWM: anonymous memory plus resident pages of
/// mapped files such as a model); -1 if unknown.
std::int64_t peak_resident_bytes();

/// Resident memory now (VmRSS: anonymous plus resident mapped-file pages); -1 if unknown.
std::int64_t current_resident_bytes();

/// Anonymous resident memory now (RssAnon: what the process allocated, without mapped file
/// pages such as a model's, which the kernel can drop); -1 if unknown.
std::int64_t current_anonymous_bytes();

/// The kernel keeps no peak of anonymous memory (VmHWM counts mapped model pages too), so this
/// samples current_anonymous_bytes() every `period_ms` from a thread of its own while it lives.
/// Peaks shorter than a period can be missed; faulting in a big tensor takes longer than that.
class AnonymousPeakSampler {
public:
    explicit AnonymousPeakSampler(int period_ms = 20);
    ~AnonymousPeakSampler();
    AnonymousPeakSampler(const AnonymousPeakSampler&) = delete;
    AnonymousPeakSampler& operator=(const AnonymousPeakSampler&) = delete;
    /// Samples now, then returns the highest sample since construction or the previous
    /// take_period_peak(); -1 if unknown.
    std::int64_t take_period_peak();
    /// The highest sample so far (taking none); -1 if unknown.
    std::int64_t peak() const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

/// Throws Error naming `what` when `bytes` clearly exceeds the available memory, so a model too
/// big for the machine is refused before allocation rather than by the OOM killer.
void require_memory(std::int64_t bytes, const std::string& what);

/// Throws Error when the file system holding `folder` has less than `bytes` free (plus 64 MiB
/// of slack): "WHAT needs N but the disk holding FOLDER has M free". Unknown space passes.
void require_disk_space(const std::string& folder, std::int64_t bytes, const std::string& what);

/// Folder of the running executable ("" if unknown).
std::string executable_dir();

/// Lower-case hex SHA-256 of a file's bytes; throws Error naming the file if it cannot be read.
std::string sha256_of_file(const std::string& path);
/// True when the linked libtorch has CUDA and a GPU is visible.
bool cuda_available();
std::string sha256_of_bytes(const std::string& bytes);
/// A cheap content fingerprint of a possibly huge file: SHA-256 of its size and bytes, whole up to
/// 64 MiB; past that the first and last MiB and 62 MiB-long samples evenly spaced between (64 MiB
/// read however big the file). Throws Error naming the file if it cannot be read.
std::string sampled_sha256_of_file(const std::string& path);

/// Whole file as bytes; throws Error naming the file.
std::string read_file_bytes(const std::string& path);

/// Streams a file to a temporary beside `path` and renames it over `path` on commit(), so a
/// failure never leaves a partial file and an existing file stays intact until the new one is
/// complete. Destroying it without commit() discards the temporary.
class AtomicFileWriter {
public:
    explicit AtomicFileWriter(const std::string& path);
    ~AtomicFileWriter();
    AtomicFileWriter(const AtomicFileWriter&) = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

    void write(const void* data, std::size_t size);
    void commit();

private:
    struct Impl;
    Impl* impl_;
};

/// Whole-buffer convenience over AtomicFileWriter.
void write_file_atomically(const std::string& path, const std::string& bytes);
/// Copies `from` to `to` through AtomicFileWriter, 64 MiB at a time; Error names the file.
void copy_file_atomically(const std::string& from, const std::string& to);

/// "1.00 MiB" style size for people.
std::string human_bytes(std::int64_t bytes);

} // namespace pbllm
