// llama2.c checkpoints (v0 and v1): any bytes must load or be refused with pbllm::Error.
#include "core/error.h"
#include "core/llama2c.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string path = pbllm::fuzz::scratch_file(data, size, ".bin");
    try {
        pbllm::load_llama2c(path);
    } catch (const pbllm::Error&) {
    }
    return 0;
}
