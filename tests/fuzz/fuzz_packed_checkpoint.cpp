// .pbllm.h5 packed checkpoints: any bytes must read (and unpack, or build the packed runtime
// layout and run one token through it) or be refused with pbllm::Error.
#include "core/decoder.h"
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
    try {
        const pbllm::PackedCheckpoint ck = pbllm::read_packed_checkpoint(path, pbllm::PackedLoad::Runtime);
        // The kernels trust the layout the reader validated: one decoding step reads all of it.
        pbllm::make_decoder(ck.quantized.model, pbllm::DecoderBackend::Cpu, 2)->step(1);
    } catch (const pbllm::Error&) {
    }
    return 0;
}
