#include "core/cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <sys/mman.h>

namespace pbllm {

namespace {

// Every block starts with a header 64 bytes before the data it hands out, so one raw deleter
// frees both kinds (libtorch calls raw_allocate/raw_deallocate in places).
constexpr std::size_t kHeader = 64;
constexpr std::size_t kPage = 4096;
struct BlockHeader {
    void* base;            ///< what malloc or mmap returned
    std::size_t mapped;    ///< length of the mapping; 0 for a malloc block
};

std::atomic<std::size_t> g_mapped{0};
std::atomic<bool> g_installed{false};

void release(void* data)
{
    if (!data)
        return;
    const BlockHeader* h = reinterpret_cast<const BlockHeader*>(static_cast<char*>(data) - kHeader);
    if (h->mapped) {
        g_mapped -= h->mapped;
        ::munmap(h->base, h->mapped);
    } else {
        std::free(h->base);
    }
}

class HugePageAllocator final : public c10::Allocator {
public:
    c10::DataPtr allocate(std::size_t bytes) const override
    {
        void* data = allocate_raw(bytes);
        return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
    }
    c10::DeleterFnPtr raw_deleter() const override { return &release; }

private:
    static void* allocate_raw(std::size_t bytes)
    {
        if (bytes == 0)
            return nullptr;
        if (bytes + kHeader < kHugePageBlockBytes) {
            void* base = nullptr;
            TORCH_CHECK(::posix_memalign(&base, kHeader, bytes + kHeader) == 0,
                        "not enough memory: you tried to allocate ", bytes, " bytes");
            auto* h = static_cast<BlockHeader*>(base);
            *h = {base, 0};
            return static_cast<char*>(base) + kHeader;
        }
        // The data starts one page into the mapping (the header's page); huge pages cover every
        // 2 MiB-aligned range inside it, i.e. all but at most 4 MiB at the ends.
        const std::size_t mapped = (bytes + kPage + kPage - 1) / kPage * kPage;
        void* base = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TORCH_CHECK(base != MAP_FAILED, "not enough memory: you tried to allocate ", bytes, " bytes");
        ::madvise(base, mapped, MADV_HUGEPAGE); // advice only: without THP, plain pages
        char* data = static_cast<char*>(base) + kPage;
        *reinterpret_cast<BlockHeader*>(data - kHeader) = {base, mapped};
        g_mapped += mapped;
        return data;
    }
};

} // namespace

void install_huge_page_allocator()
{
#ifndef PBLLM_SANITIZER_BUILD // those keep core/system.cpp's allocator, which lets ASan check every block
    static HugePageAllocator allocator;
    if (g_installed.exchange(true))
        return;
    c10::SetCPUAllocator(&allocator, /*priority=*/1);
#endif
}

bool huge_page_allocator_installed() { return g_installed.load(); }

std::size_t huge_page_allocator_mapped_bytes() { return g_mapped.load(); }

} // namespace pbllm
