#pragma once
// libtorch's CPU allocator, replaced so that big tensors are backed by transparent huge pages.
//
// On these virtual machines a page fault costs ~1 us, and glibc maps every block over 32 MiB
// afresh (and returns it on free): each new big tensor faults once per 4 KiB. A PB-GPTQ layer of
// LLaMA-7B shape spent half of its quantizer time in page faults; with 2 MiB pages (512x fewer
// faults) the layer's quantizers took 36 s instead of 88 s, the whole layer 154 s instead of 198 s.
// The kernel's default policy ("madvise") gives huge pages only to ranges that ask for them,
// which is what this does.
#include <cstddef>

namespace pbllm {

/// Blocks at least this big are mapped on their own and advised to use huge pages; smaller
/// ones come from malloc, as with libtorch's default allocator. It is glibc's mmap threshold as
/// configure_runtime sets it: below, freed blocks are reused from the heap without new faults (a
/// 4 MiB threshold slowed the forward passes by a third: every mapping is faulted in afresh).
constexpr std::size_t kHugePageBlockBytes = std::size_t(32) << 20;

/// Makes the huge-page allocator libtorch's CPU allocator (idempotent; memory already allocated
/// keeps its own deleter). configure_runtime calls it unless PBLLM_HUGE_PAGES=0. Sanitizer
/// builds keep their own allocator: nothing happens there, and installed() stays false.
void install_huge_page_allocator();
bool huge_page_allocator_installed();

/// Bytes currently held in huge-page-advised blocks by this allocator (for tests and benches).
std::size_t huge_page_allocator_mapped_bytes();

} // namespace pbllm
