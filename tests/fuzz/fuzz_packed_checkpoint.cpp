// .pbllm.h5 packed checkpoints: any bytes must read (and unpack) or be refused with pbllm::Error.
#include "core/error.h"
#include "core/packed_checkpoint.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string path = pbllm::fuzz::scratch_file(data, size, ".pbllm.h5");
    try {
        pbllm::read_packed_checkpoint(path);
    } catch (const pbllm::Error&) {
    }
    return 0;
}
