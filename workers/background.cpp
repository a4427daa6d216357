#include "workers/background.h"

#include "core/system.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace pbllm::background {

namespace {

std::atomic<std::int64_t> last_interactive_ms{-1000000};
std::atomic<int> running_units{0};

std::int64_t now_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr std::int64_t kQuietMs = 300;

} // namespace

void interactive_now() { last_interactive_ms.store(now_ms()); }

void yield_to_interactive()
{
    while (now_ms() - last_interactive_ms.load() < kQuietMs)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

int interactive_threads()
{
    return std::max(1, configured_thread_count() - running_units.load());
}

Unit::Unit()
{
    set_threads_here(1);
    ++running_units;
}

Unit::~Unit() { --running_units; }

} // namespace pbllm::background
