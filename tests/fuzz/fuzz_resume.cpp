// An interrupted `pbllm quantize` folder (state.json, a finished layer's file, the residual stream
// entering the next layer), resumed: finished, or refused with pbllm::Error naming the file.
#include "core/error.h"
#include "core/streamed_ptq.h"
#include "core/system.h"
#include "tests/fuzz/fuzz_common.h"

#include <QDir>

#include <fstream>

namespace {

void write_bytes(const std::string& path, const std::string& bytes)
{
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const pbllm::fuzz::ResumeRun& run = pbllm::fuzz::resume_run();
    pbllm::fuzz::ResumeFiles files = pbllm::fuzz::unpack_resume_files(data, size);
    const std::string placeholder = pbllm::fuzz::kLayerChecksum;
    const std::size_t at = files.state.find(placeholder);
    if (at != std::string::npos)
        files.state.replace(at, placeholder.size(), pbllm::sha256_of_bytes(files.layer));

    const std::string root = pbllm::fuzz::scratch_file(nullptr, 0, ".resume") + ".d";
    pbllm::QuantizeToFileOptions options;
    options.output = root + "/out.pbllm.h5";
    options.resume = true;
    options.model_fingerprint = "fuzz";
    const std::string dir = pbllm::partial_folder(options.output);
    QDir().mkpath(QString::fromStdString(dir));
    write_bytes(dir + "/state.json", files.state);
    write_bytes(dir + "/layer-0000.h5", files.layer);
    write_bytes(dir + "/stream-0001.bin", files.stream);
    try {
        pbllm::quantize_to_file(run.model, run.windows, run.plan, options);
    } catch (const pbllm::Error&) {
    }
    QDir(QString::fromStdString(root)).removeRecursively();
    return 0;
}
