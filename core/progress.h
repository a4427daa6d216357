#pragma once
#include <functional>
#include <string_view>

namespace pbllm {

/// Progress report from a long core operation: fraction in [0, 1] and a short stage name.
/// Returning false asks the operation to stop; it then throws pbllm::Cancelled.
using ProgressFn = std::function<bool(double fraction, std::string_view stage)>;

/// Calls `progress` if set and throws Cancelled when it returns false.
inline void report_progress(const ProgressFn& progress, double fraction, std::string_view stage);

} // namespace pbllm

#include "core/error.h"

inline void pbllm::report_progress(const ProgressFn& progress, double fraction, std::string_view stage)
{
    if (progress && !progress(fraction, stage))
        throw Cancelled();
}
