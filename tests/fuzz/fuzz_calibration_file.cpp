// Calibration HDF5 files (for the tiny seed model's shape): read or refused with pbllm::Error.
#include "core/calibration_file.h"
#include "core/error.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string path = pbllm::fuzz::scratch_file(data, size, ".calib.h5");
    try {
        pbllm::read_calibration_file(path, pbllm::fuzz::tiny_config());
    } catch (const pbllm::Error&) {
    }
    return 0;
}
